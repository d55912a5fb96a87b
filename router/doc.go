// Package router is weft's service-mesh half: it carries the dispatcher's
// calls to URL subscribers and the workers' egress (through HTTP_PROXY).
//
// This first cut forwards plain HTTP as any forward proxy does and delivers
// CloudEvents to URLs; discovery of Services, balancing, retries with
// budgets, outlier ejection and mTLS grow here. router never imports broker,
// triggers or workers.
package router
