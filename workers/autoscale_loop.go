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
		fs.scaler.Record(now, float64(fs.demandLocked()), backlog[name])
		if decide {
			d := fs.scaler.Decide(now, fs.currentLocked())
			fs.panic = d.Panic
			p.setDesiredLocked(fs, d)
		}
	}
}
