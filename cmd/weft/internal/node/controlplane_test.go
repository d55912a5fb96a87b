package node

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weft-dev/weft/internal/resource"
	"github.com/weft-dev/weft/internal/store"
)

func TestApplyActions(t *testing.T) {
	cp, rec, st := newCP(t)

	got := mustApply(t, cp, "", join(triggerDoc("t1", "a"), functionDoc("f1", "info")))
	want := []Change{{"Trigger", "t1", "created"}, {"Function", "f1", "created"}}
	if !slices.Equal(got, want) {
		t.Fatalf("first apply: %v, want %v", got, want)
	}
	if n := rec.triggerNames(); !slices.Equal(n, []string{"t1"}) {
		t.Errorf("broker has triggers %v, want [t1]", n)
	}
	if c := rec.calls(); c.applied != "f1" || c.removed != "" {
		t.Errorf("pool calls %+v, want f1 applied once", c)
	}
	if k := storeKeys(t, st); !slices.Equal(k, []string{"resources/Function/f1", "resources/Trigger/t1"}) {
		t.Errorf("store keys %v", k)
	}

	got = mustApply(t, cp, "", join(triggerDoc("t1", "a"), functionDoc("f1", "info")))
	want = []Change{{"Trigger", "t1", "unchanged"}, {"Function", "f1", "unchanged"}}
	if !slices.Equal(got, want) {
		t.Errorf("same apply again: %v, want %v", got, want)
	}
	if c := rec.calls(); c.applied != "f1" {
		t.Errorf("an unchanged function was applied again: %+v", c)
	}

	got = mustApply(t, cp, "", triggerDoc("t1", "b"))
	want = []Change{{"Trigger", "t1", "configured"}}
	if !slices.Equal(got, want) {
		t.Errorf("changed trigger: %v, want %v", got, want)
	}
	if tr, ok := rec.trigger("t1"); !ok || !tr.Match(eventOfType("b")) || tr.Match(eventOfType("a")) {
		t.Error("the broker does not have the new t1")
	}
	if !strings.Contains(string(mustGet(t, cp, "Trigger", "t1").Manifest), `"type":"b"`) {
		t.Errorf("t1's manifest in force is not the new one")
	}
	if c := rec.calls(); c.applied != "f1" {
		t.Errorf("a trigger-only apply re-applied functions: %+v", c)
	}
	if r := cp.List("Function"); len(r) != 1 || r[0].Name != "f1" || r[0].Source != sourceAPI {
		t.Errorf("List(Function) = %+v", r)
	}
}

// TestApplyIsAllOrNothing applies a batch in which two documents are bad:
// nothing of it may take effect, and every problem names file, line, field.
func TestApplyIsAllOrNothing(t *testing.T) {
	cp, rec, st := newCP(t)
	mustApply(t, cp, "base.yaml", join(triggerDoc("t1", "a"), functionDoc("f1", "info")))
	beforeState, beforeStore, beforeCalls := listDump(cp), storeDump(t, st), rec.calls()

	badTrigger := strings.Replace(triggerDoc("t3", "c"), "- exact: {type: c}", `- cesql: "type = "`, 1)
	badFunction := strings.Replace(functionDoc("f2", "debug"), "{min: 0, max: 2}", "{min: 5, max: 2}", 1)
	yaml := join(
		triggerDoc("t1", "changed"), // a good change to something in force
		triggerDoc("t2", "new"),     // a good new trigger
		badTrigger,
		functionDoc("f1", "debug"), // a good change to a function in force
		badFunction,
	)
	_, err := cp.Apply(t.Context(), decode(t, "batch.yaml", yaml), sourceAPI)
	if err == nil {
		t.Fatal("an apply with bad documents succeeded")
	}
	got := wheres(fieldErrors(t, err))
	want := []where{
		{"batch.yaml", lineOf(t, yaml, "cesql:", 1), "spec.filters[0].cesql"},
		{"batch.yaml", lineOf(t, yaml, "min: 5", 1), "spec.scale.min"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems %+v, want %+v", got, want)
	}
	if s := listDump(cp); s != beforeState {
		t.Errorf("state changed by a refused apply:\n%s\nwas:\n%s", s, beforeState)
	}
	if s := storeDump(t, st); s != beforeStore {
		t.Errorf("store changed by a refused apply:\n%s\nwas:\n%s", s, beforeStore)
	}
	if c := rec.calls(); c != beforeCalls {
		t.Errorf("broker or pool called by a refused apply: %+v, was %+v", c, beforeCalls)
	}
	if tr, _ := rec.trigger("t1"); tr == nil || !tr.Match(eventOfType("a")) {
		t.Error("t1 in the broker is not the one in force before")
	}
}

func TestApplyRefusesDuplicates(t *testing.T) {
	cp, rec, st := newCP(t)
	yaml := join(triggerDoc("dup", "a"), functionDoc("dup", "info"), triggerDoc("dup", "b"))
	_, err := cp.Apply(t.Context(), decode(t, "dups.yaml", yaml), sourceAPI)
	if err == nil {
		t.Fatal("two Triggers named dup in one apply were accepted")
	}
	got := wheres(fieldErrors(t, err))
	// The Function of the same name is another resource; only the second
	// Trigger is refused, at its name.
	want := []where{{"dups.yaml", lineOf(t, yaml, "name: dup", 3), "metadata.name"}}
	if !slices.Equal(got, want) {
		t.Errorf("problems %+v, want %+v", got, want)
	}
	if !strings.Contains(err.Error(), "Trigger/dup") {
		t.Errorf("error does not name the resource: %v", err)
	}
	if l := cp.List(""); len(l) != 0 {
		t.Errorf("resources in force after a refused apply: %+v", l)
	}
	if k := storeKeys(t, st); len(k) != 0 {
		t.Errorf("store written by a refused apply: %v", k)
	}
	if c := rec.calls(); c != (calls{}) {
		t.Errorf("broker or pool called: %+v", c)
	}
}

func TestTriggerOfAnotherBrokerRefused(t *testing.T) {
	cp, rec, _ := newCP(t)
	yaml := join(triggerDoc("ok", "a"), strings.Replace(triggerDoc("elsewhere", "a"), "broker: default", "broker: other", 1))
	_, err := cp.Apply(t.Context(), decode(t, "brokers.yaml", yaml), sourceAPI)
	got := wheres(fieldErrors(t, err))
	want := []where{{"brokers.yaml", lineOf(t, yaml, "broker: other", 1), "spec.broker"}}
	if err == nil || !slices.Equal(got, want) {
		t.Fatalf("err %v with problems %+v, want %+v", err, got, want)
	}
	if rec.calls().sets != 0 || len(cp.List("")) != 0 {
		t.Error("the good trigger of the refused apply took effect")
	}
	if err := Check(decode(t, "brokers.yaml", yaml)); err == nil {
		t.Error("Check accepted a trigger of another broker")
	}
}

// TestRestore restarts the control plane on the same Badger directory:
// API-applied resources come back with the same specs, file-sourced and
// deleted ones do not.
func TestRestore(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	rec := &recorder{}
	cp := NewControlPlane(st, rec, rec, discard())

	fnFile := filepath.Join(t.TempDir(), "fns", "f1.yaml")
	mustApply(t, cp, fnFile, functionDoc("f1", "info"))
	mustApply(t, cp, "", join(triggerDoc("api-t", "a"), triggerDoc("gone", "g")))
	if _, err := cp.ReplaceFiles(t.Context(), decode(t, "/etc/weft/file.yaml", join(triggerDoc("file-t", "b"), functionDoc("file-f", "info")))); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Delete(t.Context(), []resource.Key{{Kind: "Trigger", Name: "gone"}}); err != nil {
		t.Fatal(err)
	}
	wantFn := rec.lastApplied("f1")
	// A record as stored before records carried their file: a bare manifest.
	legacy := decode(t, "", triggerDoc("legacy-t", "l"))[0]
	if err := st.Put(t.Context(), "resources/Trigger/legacy-t", legacy.JSON); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st2 := openStore(t, dir)
	rec2 := &recorder{}
	cp2 := NewControlPlane(st2, rec2, rec2, discard())
	if err := cp2.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range cp2.List("") {
		got = append(got, r.Kind+"/"+r.Name+" "+r.Source)
	}
	if want := []string{"Function/f1 api", "Trigger/api-t api", "Trigger/legacy-t api"}; !slices.Equal(got, want) {
		t.Errorf("restored %v, want %v", got, want)
	}
	if n := rec2.triggerNames(); !slices.Equal(n, []string{"api-t", "legacy-t"}) {
		t.Errorf("broker got triggers %v after restore, want [api-t legacy-t]", n)
	}
	fn := rec2.lastApplied("f1")
	if fn == nil {
		t.Fatal("restored function not handed to the pool")
	}
	// Regression: the store kept only the manifest, so a restored Function
	// resolved its working directory from the store key ("store:resources/
	// Function") instead of its file's folder, and its processes could not
	// start after a restart. Now the spec is the one applied.
	if !fn.Equal(wantFn) {
		t.Errorf("restored function %+v differs from the applied %+v", fn, wantFn)
	}
	if fn.Dir != filepath.Dir(fnFile) {
		t.Errorf("restored function runs in %s, want %s", fn.Dir, filepath.Dir(fnFile))
	}
	// Applying the same manifest from the same file after the restart is a
	// no-op, as before it.
	if ch := mustApply(t, cp2, fnFile, functionDoc("f1", "info")); ch[0].Action != "unchanged" {
		t.Errorf("re-apply after restore: %v, want unchanged", ch)
	}
}

func TestReplaceFilesLeavesAPIResources(t *testing.T) {
	cp, rec, st := newCP(t)
	mustApply(t, cp, "", join(triggerDoc("api-t", "a"), functionDoc("api-f", "info")))
	apiStore := storeDump(t, st)

	a := decode(t, "/m/a.yaml", join(triggerDoc("fa", "a"), functionDoc("ffa", "info")))
	b := decode(t, "/m/b.yaml", join(triggerDoc("fb", "b"), functionDoc("ffb", "info")))
	got, err := cp.ReplaceFiles(t.Context(), append(slices.Clone(a), b...))
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{"Trigger", "fa", "created"}, {"Function", "ffa", "created"}, {"Trigger", "fb", "created"}, {"Function", "ffb", "created"}}
	if !slices.Equal(got, want) {
		t.Errorf("first load %v, want %v", got, want)
	}
	if s := storeDump(t, st); s != apiStore {
		t.Errorf("file resources were persisted:\n%s", s)
	}
	if r := mustGet(t, cp, "Trigger", "fa"); r.Source != "/m/a.yaml" {
		t.Errorf("source of fa = %q, want its file", r.Source)
	}

	got, err = cp.ReplaceFiles(t.Context(), a) // b.yaml was deleted
	if err != nil {
		t.Fatal(err)
	}
	want = []Change{{"Trigger", "fa", "unchanged"}, {"Function", "ffa", "unchanged"}}
	del := []Change{{"Function", "ffb", "deleted"}, {"Trigger", "fb", "deleted"}}
	if !slices.Equal(got[:2], want) || !sameChanges(got[2:], del) {
		t.Errorf("reload without b.yaml: %v, want %v then %v", got, want, del)
	}
	if n := rec.triggerNames(); !slices.Equal(n, []string{"api-t", "fa"}) {
		t.Errorf("broker has %v, want [api-t fa]", n)
	}
	if c := rec.calls(); c.removed != "ffb" {
		t.Errorf("pool removals %q, want ffb", c.removed)
	}
	var names []string
	for _, r := range cp.List("") {
		names = append(names, r.Name)
	}
	if !slices.Equal(names, []string{"api-f", "ffa", "api-t", "fa"}) {
		t.Errorf("in force: %v", names)
	}
	if s := storeDump(t, st); s != apiStore {
		t.Errorf("store changed by file reloads:\n%s\nwant:\n%s", s, apiStore)
	}

	// A bad file set is refused whole: fa stays, nothing is deleted.
	before, beforeCalls := listDump(cp), rec.calls()
	bad := decode(t, "/m/a.yaml", strings.Replace(triggerDoc("fa", "a"), "uri: http://127.0.0.1:9/hook", "uri: 42", 1))
	if _, err := cp.ReplaceFiles(t.Context(), bad); err == nil {
		t.Fatal("a bad file set was accepted")
	}
	if s := listDump(cp); s != before || rec.calls() != beforeCalls {
		t.Errorf("a refused file reload changed state:\n%s", s)
	}
}

func TestDeleteUnknownChangesNothing(t *testing.T) {
	cp, rec, st := newCP(t)
	mustApply(t, cp, "", join(triggerDoc("t1", "a"), functionDoc("f1", "info")))
	before, beforeStore, beforeCalls := listDump(cp), storeDump(t, st), rec.calls()

	_, err := cp.Delete(t.Context(), []resource.Key{{Kind: "Function", Name: "f1"}, {Kind: "Trigger", Name: "nope"}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of an unknown key: %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "Trigger/nope") {
		t.Errorf("error does not name the key: %v", err)
	}
	if listDump(cp) != before || storeDump(t, st) != beforeStore || rec.calls() != beforeCalls {
		t.Error("a refused delete changed state, store or components")
	}

	got, err := cp.Delete(t.Context(), []resource.Key{{Kind: "Function", Name: "f1"}, {Kind: "Trigger", Name: "t1"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{"Function", "f1", "deleted"}, {"Trigger", "t1", "deleted"}}; !slices.Equal(got, want) {
		t.Errorf("delete: %v, want %v", got, want)
	}
	if k := storeKeys(t, st); len(k) != 0 {
		t.Errorf("store still has %v", k)
	}
	if c := rec.calls(); c.removed != "f1" || rec.idx.Len() != 0 {
		t.Errorf("after delete: %+v, %d triggers", c, rec.idx.Len())
	}
}

func TestFunctionReappliedOnlyWhenChanged(t *testing.T) {
	cp, rec, st := newCP(t)
	mustApply(t, cp, "/srv/fn.yaml", functionDoc("f1", "info"))
	mustApply(t, cp, "/srv/fn.yaml", functionDoc("f1", "info"))
	mustApply(t, cp, "", triggerDoc("t1", "a"))
	if c := rec.calls(); c.applied != "f1" {
		t.Fatalf("pool applies %q, want f1 once", c.applied)
	}

	mustApply(t, cp, "/srv/fn.yaml", functionDoc("f1", "debug"))
	if c := rec.calls(); c.applied != "f1,f1" {
		t.Fatalf("pool applies %q after a change, want f1,f1", c.applied)
	}
	if env := rec.lastApplied("f1").Env; len(env) != 1 || env[0].Value != "debug" {
		t.Errorf("pool got env %v, want LOG_LEVEL=debug", env)
	}

	// The same manifest from another file runs in another folder, so it is
	// a change (it was reported "unchanged" and not persisted, so a restart
	// went back to the old folder).
	if ch := mustApply(t, cp, "/opt/fn.yaml", functionDoc("f1", "debug")); ch[0].Action != "configured" {
		t.Errorf("same manifest from another file: %v, want configured", ch)
	}
	if v, err := st.Get(t.Context(), "resources/Function/f1"); err != nil || !strings.Contains(string(v), `"/opt/fn.yaml"`) {
		t.Errorf("stored record %s (%v) does not name /opt/fn.yaml", v, err)
	}
	if fn := rec.lastApplied("f1"); rec.calls().applied != "f1,f1,f1" || fn.Dir != "/opt" {
		t.Errorf("moved manifest: applies %q, dir %s", rec.calls().applied, fn.Dir)
	}

	if _, err := cp.Delete(t.Context(), []resource.Key{{Kind: "Function", Name: "f1"}}); err != nil {
		t.Fatal(err)
	}
	if c := rec.calls(); c.removed != "f1" || c.applied != "f1,f1,f1" {
		t.Errorf("after delete: %+v", c)
	}
}

// TestStoreFailureChangesNothing closes the store under the control plane:
// the apply fails and neither the state nor the components see it.
func TestStoreFailureChangesNothing(t *testing.T) {
	cp, rec, st := newCP(t)
	mustApply(t, cp, "", triggerDoc("t1", "a"))
	before, beforeCalls := listDump(cp), rec.calls()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := cp.Apply(t.Context(), decode(t, "", triggerDoc("t2", "b")), sourceAPI)
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("apply on a closed store: %v, want ErrClosed", err)
	}
	if listDump(cp) != before || rec.calls() != beforeCalls {
		t.Error("an apply that was not persisted took effect")
	}
}

func TestCheck(t *testing.T) {
	if err := Check(decode(t, "ok.yaml", join(triggerDoc("t", "a"), functionDoc("f", "info")))); err != nil {
		t.Errorf("Check of good manifests: %v", err)
	}
	yaml := strings.Replace(functionDoc("f", "info"), "weft.dev/v1", "weft.dev/v2", 1)
	got := wheres(fieldErrors(t, Check(decode(t, "bad.yaml", yaml))))
	if want := []where{{"bad.yaml", 1, "apiVersion"}}; !slices.Equal(got, want) {
		t.Errorf("Check problems %+v, want %+v", got, want)
	}
	yaml = strings.Replace(triggerDoc("t", "a"), "kind: Trigger", "kind: Gateway", 1)
	got = wheres(fieldErrors(t, Check(decode(t, "gw.yaml", yaml))))
	if want := []where{{"gw.yaml", 2, "kind"}}; !slices.Equal(got, want) {
		t.Errorf("unknown kind problems %+v, want %+v", got, want)
	}
}
