package triggers

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/antlr/antlr4/runtime/Go/antlr"
	cesql "github.com/cloudevents/sdk-go/sql/v2"
	"github.com/cloudevents/sdk-go/sql/v2/gen"
	"github.com/cloudevents/sdk-go/sql/v2/parser"
	"github.com/cloudevents/sdk-go/v2/event"
)

// cesqlFilter is the Subscriptions API cesql dialect: a CloudEvents SQL v1
// expression that must evaluate to true. As in Knative (cesql_filter.go), an
// evaluation error (a missing attribute, a failed cast, an unknown function)
// means no match. A result that is not a boolean is no match too, where
// Knative's type assertion would panic.
type cesqlFilter struct {
	src  string
	expr cesql.Expression
}

// parseMu serialises CESQL parsing: the ANTLR 4 Go runtime the SDK's parser
// uses shares its prediction caches between parsers without locking.
// Evaluation does not touch ANTLR and needs no lock.
var parseMu sync.Mutex

// newCESQL compiles src. A syntax error names the column and what the parser
// expected; the SDK's own error text is empty for most of them, and its
// parser panics on some inputs, so the expression is checked with error
// listeners of our own first and parser.Parse runs only on valid input.
func newCESQL(src string) (_ Filter, err error) {
	parseMu.Lock()
	defer parseMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("invalid CESQL expression: parser failed: %v", r)
		}
	}()
	if src == "" {
		return nil, errors.New("invalid CESQL expression: empty")
	}
	if err := checkCESQLSyntax(src); err != nil {
		return nil, err
	}
	expr, err := parser.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("invalid CESQL expression: %w", err)
	}
	if expr == nil {
		return nil, errors.New("invalid CESQL expression: no expression")
	}
	return cesqlFilter{src: src, expr: expr}, nil
}

// syntaxListener records the first syntax error of the lexer and the parser.
type syntaxListener struct {
	*antlr.DefaultErrorListener
	err error
}

func (l *syntaxListener) SyntaxError(_ antlr.Recognizer, _ any, _, column int, msg string, _ antlr.RecognitionException) {
	if l.err == nil {
		l.err = fmt.Errorf("invalid CESQL expression at column %d: %s", column+1, msg)
	}
}

// checkCESQLSyntax runs the SDK's generated lexer and parser, as
// parser.Parse does (upper-casing through parser.NewCaseChangingStream), but
// with listeners that keep the error and print nothing to stderr.
func checkCESQLSyntax(src string) error {
	l := &syntaxListener{DefaultErrorListener: antlr.NewDefaultErrorListener()}
	lexer := gen.NewCESQLParserLexer(parser.NewCaseChangingStream(antlr.NewInputStream(src), true))
	lexer.RemoveErrorListeners()
	lexer.AddErrorListener(l)
	p := gen.NewCESQLParserParser(antlr.NewCommonTokenStream(lexer, antlr.TokenDefaultChannel))
	p.RemoveErrorListeners()
	p.AddErrorListener(l)
	p.Cesql()
	return l.err
}

func (f cesqlFilter) Match(ev event.Event) (ok bool) {
	if ev.Context == nil {
		return false
	}
	defer func() {
		if recover() != nil {
			ok = false // a bug in the evaluator must not stop the dispatcher
		}
	}()
	v, err := f.expr.Evaluate(ev)
	if err != nil {
		return false
	}
	b, isBool := v.(bool)
	return isBool && b
}

func (f cesqlFilter) String() string { return "cesql(" + strings.TrimSpace(f.src) + ")" }
