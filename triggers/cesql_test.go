package triggers

import (
	"strings"
	"sync"
	"testing"
)

// TestCESQLSyntaxErrors covers inputs on which the SDK's parser.Parse panics
// or reports an empty message: each must be an error that says where.
func TestCESQLSyntaxErrors(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		"a b", "type = 'x' )", "'unterminated", "EXISTS", "type = 'x' AND", "a.b = 1",
		"(((", "@@", "size >", "NOT", "type IN ()", "type LIKE 3", ")",
	} {
		_, err := newCESQL(src)
		if err == nil {
			t.Errorf("newCESQL(%q) = nil error", src)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "CESQL") || strings.HasSuffix(msg, ": ") {
			t.Errorf("newCESQL(%q): unhelpful error %q", src, msg)
		}
	}
	if _, err := newCESQL(""); err == nil {
		t.Error("empty expression accepted")
	}
}

func TestCESQLConcurrentCompileAndMatch(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := newCESQL("size > 1024 AND region LIKE 'eu-%'")
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := newCESQL("a b"); err == nil {
				t.Error("syntax error accepted")
			}
			for range 50 {
				if !f.Match(testEvent()) || f.Match(bare()) {
					t.Errorf("worker %d: wrong result", i)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzCESQL(f *testing.F) {
	for _, s := range []string{
		"size > 1024", "type = 'x' )", "a b", "EXISTS", "type = 'x' AND",
		"subject LIKE '%.jpg' AND NOT (region IN ('us', 'eu'))", "ABS(size) % 7 = 1", "1/0 = 1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		flt, err := newCESQL(src)
		if err != nil {
			if flt != nil {
				t.Fatalf("filter and error %v", err)
			}
			return
		}
		flt.Match(testEvent())
		flt.Match(bare())
	})
}
