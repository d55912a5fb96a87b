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
	keys [][]key // the equalities ANDed at the top, for the Index
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
	tree, err := checkCESQLSyntax(src)
	if err != nil {
		return nil, err
	}
	expr, err := parser.Parse(src)
	if err != nil {
		return nil, fmt.Errorf("invalid CESQL expression: %w", err)
	}
	if expr == nil {
		return nil, errors.New("invalid CESQL expression: no expression")
	}
	f := cesqlFilter{src: src, expr: expr}
	if c, ok := tree.(*gen.CesqlContext); ok {
		f.keys = cesqlKeys(c.Expression())
	}
	return f, nil
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
// with listeners that keep the error and print nothing to stderr. It returns
// the parse tree.
func checkCESQLSyntax(src string) (gen.ICesqlContext, error) {
	l := &syntaxListener{DefaultErrorListener: antlr.NewDefaultErrorListener()}
	lexer := gen.NewCESQLParserLexer(parser.NewCaseChangingStream(antlr.NewInputStream(src), true))
	lexer.RemoveErrorListeners()
	lexer.AddErrorListener(l)
	p := gen.NewCESQLParserParser(antlr.NewCommonTokenStream(lexer, antlr.TokenDefaultChannel))
	p.RemoveErrorListeners()
	p.AddErrorListener(l)
	tree := p.Cesql()
	return tree, l.err
}

// cesqlKeys returns one key set per equality of an attribute and a string
// literal that the expression ANDs at its top (through parentheses): the
// expression is true only if each of them is. Anything else (OR, NOT, other
// comparisons) contributes no key.
//
// The SDK evaluates attr = 'lit' as Cast(value, String) == lit, which is
// lookup's rendering for the attributes cesqlKeyAttr admits (and for
// extensions of the plain types; the Index treats the others as
// candidates). With the literal first, the literal is cast to the
// attribute's type instead, so only string-typed attributes qualify.
func cesqlKeys(e gen.IExpressionContext) [][]key {
	switch c := e.(type) {
	case *gen.SubExpressionContext:
		return cesqlKeys(c.Expression())
	case *gen.BinaryLogicExpressionContext:
		if c.AND() == nil {
			return nil
		}
		return append(cesqlKeys(c.Expression(0)), cesqlKeys(c.Expression(1))...)
	case *gen.BinaryComparisonExpressionContext:
		if c.EQUAL() == nil {
			return nil
		}
		attr, lit, ok := cesqlIdentifier(c.Expression(0)), cesqlString(c.Expression(1)), true
		if attr == "" {
			attr, lit = cesqlIdentifier(c.Expression(1)), cesqlString(c.Expression(0))
			ok = cesqlStringAttributes[attr]
		}
		if attr == "" || lit == "" || !ok || !(cesqlStringAttributes[attr] || isExtensionName(attr)) {
			return nil
		}
		return [][]key{{{op: opExact, attr: attr, value: lit, cesql: true}}}
	}
	return nil
}

// cesqlStringAttributes are the context attributes whose value is a string
// both to CESQL and to lookup.
var cesqlStringAttributes = map[string]bool{"id": true, "type": true, "subject": true, "specversion": true, "datacontenttype": true}

// cesqlIdentifier returns the attribute name e consists of, lower-cased as
// the SDK does, or "".
func cesqlIdentifier(e gen.IExpressionContext) string {
	a, ok := e.(*gen.AtomExpressionContext)
	if !ok {
		return ""
	}
	id, ok := a.Atom().(*gen.IdentifierAtomContext)
	if !ok || id.Identifier() == nil {
		return ""
	}
	return strings.ToLower(id.Identifier().GetText())
}

// cesqlString returns the string literal e consists of, unquoted as the
// SDK does, or "".
func cesqlString(e gen.IExpressionContext) string {
	a, ok := e.(*gen.AtomExpressionContext)
	if !ok {
		return ""
	}
	s, ok := a.Atom().(*gen.StringAtomContext)
	if !ok {
		return ""
	}
	lit, ok := s.StringLiteral().(*gen.StringLiteralContext)
	if !ok {
		return ""
	}
	switch {
	case lit.SQUOTED_STRING_LITERAL() != nil:
		t := lit.SQUOTED_STRING_LITERAL().GetText()
		return strings.ReplaceAll(t[1:len(t)-1], `\'`, "'")
	case lit.DQUOTED_STRING_LITERAL() != nil:
		t := lit.DQUOTED_STRING_LITERAL().GetText()
		return strings.ReplaceAll(t[1:len(t)-1], `\"`, `"`)
	}
	return ""
}

// keyAlternatives lets the Index file the trigger under one of the
// expression's top-level equalities.
func (f cesqlFilter) keyAlternatives(func([][]key) []key) [][]key { return f.keys }

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
