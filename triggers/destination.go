package triggers

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/weft-dev/weft/internal/resource"
)

// Destination is where a trigger delivers: a weft Function, or a URL. The
// zero value is not a valid destination; destinations come from Parse.
type Destination struct {
	// FunctionName names the weft Function that receives the events; empty
	// for a plain URL.
	FunctionName string
	// URI is the absolute http or https URL when FunctionName is empty, and
	// otherwise an optional path (with its query) on the function, starting
	// with "/".
	URI string
}

// Target renders the destination as the broker's Deliverer expects it:
// "function:NAME", "function:NAME/path" for a ref with a relative uri, or the
// absolute URL as given.
func (d Destination) Target() string {
	if d.FunctionName == "" {
		return d.URI
	}
	return "function:" + d.FunctionName + d.URI
}

// String returns Target.
func (d Destination) String() string { return d.Target() }

// The refs a destination may hold. Knative Service refs mean the weft
// Function of that name, so Knative manifests work unchanged.
const (
	weftAPIVersion    = "weft.dev/v1"
	servingAPIVersion = "serving.knative.dev/v1"
)

// destinationSpec is a Knative duck/v1 Destination as the YAML spells it.
type destinationSpec struct {
	Ref *refSpec `json:"ref,omitempty"`
	URI *string  `json:"uri,omitempty"`
}

type refSpec struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	// Namespace is accepted for compatibility and ignored: weft has one.
	Namespace string `json:"namespace,omitempty"`
}

// compileDestination checks ds as Knative's duck/v1 ValidateDestination does
// (at least one of ref and uri; with a ref the uri must be relative; alone it
// must be absolute with a host) and resolves the ref to a weft Function.
func (c *compiler) compileDestination(ds *destinationSpec, path []string) (Destination, bool) {
	if ds.Ref == nil && ds.URI == nil {
		c.fail(path, errors.New("needs a ref, a uri or both"))
		return Destination{}, false
	}
	var d Destination
	if ds.Ref != nil {
		name, err := resolveRef(*ds.Ref)
		if err != nil {
			c.fail(with(path, "ref"), err)
			return Destination{}, false
		}
		d.FunctionName = name
	}
	if ds.URI == nil {
		return d, true
	}
	u, err := url.Parse(*ds.URI)
	if err != nil {
		c.fail(with(path, "uri"), fmt.Errorf("invalid URI: %w", err))
		return Destination{}, false
	}
	if ds.Ref != nil {
		rel, err := relativePath(u)
		if err != nil {
			c.fail(with(path, "uri"), err)
			return Destination{}, false
		}
		d.URI = rel
		return d, true
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Opaque != "" {
		c.fail(with(path, "uri"), fmt.Errorf("%q must be an absolute http or https URL (http://<service-name>/path for a declared Service), or a relative path together with a ref", *ds.URI))
		return Destination{}, false
	}
	d.URI = *ds.URI
	return d, true
}

// resolveRef maps a ref to the name of the weft Function it means.
func resolveRef(r refSpec) (string, error) {
	switch {
	case r.Kind == "Function" && r.APIVersion == weftAPIVersion,
		r.Kind == "Service" && r.APIVersion == servingAPIVersion:
	case r.Kind == "Service" && r.APIVersion == weftAPIVersion:
		return "", fmt.Errorf("a weft Service is reached by URL: use uri: http://%s/ instead of a ref", r.Name)
	default:
		return "", fmt.Errorf("unsupported ref %s %s: a subscriber ref must be a Function (%s) or a Service (%s)", r.APIVersion, r.Kind, weftAPIVersion, servingAPIVersion)
	}
	if err := resource.ValidateName(r.Name); err != nil {
		return "", err
	}
	return r.Name, nil
}

// relativePath checks the uri that accompanies a ref: Knative resolves it
// against the ref's address, so it must be relative. It returns it as a path
// (with query) starting with "/".
func relativePath(u *url.URL) (string, error) {
	if u.IsAbs() || u.Host != "" {
		return "", fmt.Errorf("%q must be a relative path when a ref is given (Knative refuses an absolute URI with a ref)", u.String())
	}
	if u.Fragment != "" {
		return "", fmt.Errorf("%q: a fragment is never sent to a subscriber", u.String())
	}
	rel := u.EscapedPath()
	if !strings.HasPrefix(rel, "/") {
		rel = "/" + rel
	}
	if u.RawQuery != "" {
		rel += "?" + u.RawQuery
	}
	return rel, nil
}
