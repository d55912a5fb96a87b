// Package resource decodes weft's YAML manifests: the envelope every kind shares
// (apiVersion, kind, metadata), multi-document files and folders, and the
// positions of fields, so that errors name the file, the line and the field.
//
// It imports only the standard library and the YAML parser; kind-specific
// decoding (Trigger, Function, Service) lives with the component that owns the
// kind and reports problems as *FieldError.
package resource
