package resource

import "fmt"

// FieldError is a problem with one field of one manifest. Every field but Err
// is optional: File is empty for input without a name, Line 0 when unknown,
// Field empty when the problem is the document as a whole.
type FieldError struct {
	File   string
	Line   int
	Column int
	Field  string
	Err    error
}

// Error renders "file:line:col: field: problem", leaving out what is unknown.
func (e *FieldError) Error() string {
	loc := e.File
	if loc == "" {
		loc = "<input>"
	}
	if e.Line > 0 {
		loc += fmt.Sprintf(":%d", e.Line)
		if e.Column > 0 {
			loc += fmt.Sprintf(":%d", e.Column)
		}
	}
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %v", loc, e.Field, e.Err)
	}
	return fmt.Sprintf("%s: %v", loc, e.Err)
}

// Unwrap returns the underlying problem.
func (e *FieldError) Unwrap() error { return e.Err }
