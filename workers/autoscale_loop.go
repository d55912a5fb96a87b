package workers

import "time"

// autoscale observes every function's demand each Config.SampleEvery and
// lets its autoscaler decide each AutoscaleTick, until the pool stops.
func (p *Pool) autoscale() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.SampleEvery)
	defer t.Stop()
	var lastDecide time.Time
	for {
		select {
		case <-p.quit:
			return
		case now := <-t.C:
			decide := now.Sub(lastDecide) >= AutoscaleTick-p.cfg.SampleEvery/2
			if decide {
				lastDecide = now
			}
			p.scaleOnce(now, decide)
		}
	}
}

// scaleOnce records one observation per function and, when decide is set,
// applies each autoscaler's decision.
func (p *Pool) scaleOnce(now time.Time, decide bool) {
	backlog := map[string]int{}
	if p.cfg.Backlog != nil {
		p.mu.Lock()
		names := make([]string, 0, len(p.fns))
		for name := range p.fns {
			names = append(names, name)
		}
		p.mu.Unlock()
		for _, name := range names { // outside the lock: it may ask the broker
			backlog[name] = p.cfg.Backlog.Backlog(name)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != poolRunning {
		return
	}
	for name, fs := range p.fns {
		fs.backlog, fs.burstDemand = backlog[name], 0
		fs.scaler.Record(now, float64(fs.demandLocked()), fs.backlog)
		if decide {
			d := fs.scaler.Decide(now, fs.currentLocked())
			fs.panic = d.Panic
			p.setDesiredLocked(fs, d)
		}
	}
}

// burstLocked lets fs's autoscaler decide at once, between ticks, when the
// demand right now would put it in panic mode: at least PanicThreshold ×
// the capacity of the instances running or starting. Knative's KPA decides
// only each tick (2 s), so a step in load waits up to a tick before a
// second instance starts; weft's activator sees every request arrive. The
// observation goes into the same windows and the decision is the KPA's own,
// only earlier; it is applied only when it scales up. Only a demand higher
// than the last one observed this way since the last sample counts, so a
// burst adds a few observations, not one per request. Called on each
// request's arrival, with p.mu held.
func (p *Pool) burstLocked(fs *fnState) {
	if p.state != poolRunning || fs.desired == 0 {
		return // a cold start is decided where the request waits
	}
	demand := fs.demandLocked()
	if demand <= fs.burstDemand {
		return
	}
	current := fs.currentLocked()
	cfg := &fs.scaler.cfg
	if float64(demand+fs.backlog)/cfg.Target < cfg.PanicThreshold*float64(max(current, 1)) {
		return
	}
	fs.burstDemand = demand
	now := time.Now()
	fs.scaler.Record(now, float64(demand), fs.backlog)
	if d := fs.scaler.Decide(now, current); d.Desired > fs.desired {
		p.setDesiredLocked(fs, d)
	}
}
