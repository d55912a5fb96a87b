package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// RenewFraction is the share of an SVID's lifetime after which SVIDSource
// replaces it (Linkerd's 70 %): with 24 h certificates, renewal comes 7.2 h
// before expiry, time enough to retry through an outage of the issuer.
const RenewFraction = 0.7

// renewRetry is how long SVIDSource waits after a failed renewal before it
// tries again, while the current SVID is still valid.
const renewRetry = 30 * time.Second

// File names that SVIDSource.WriteFiles keeps up to date; a worker gets their
// paths as WEFT_CERT_FILE, WEFT_KEY_FILE and WEFT_CA_FILE.
const (
	CertFileName = "cert.pem" // the leaf, then the chain to (not including) the root
	KeyFileName  = "key.pem"  // the leaf's key, PKCS #8, mode 0600
	CAFileName   = "ca.pem"   // the trust anchor
)

// Issuer issues X.509-SVIDs; *CA is one.
type Issuer interface {
	Issue(id spiffeid.ID) (*x509svid.SVID, error)
}

// SVIDOption configures optional infrastructure of an SVIDSource.
type SVIDOption func(*SVIDSource)

// WithAfter replaces time.After as the way Run waits for the next renewal.
// Tests pass a fake clock's After, so that advancing the clock triggers
// renewal without real waiting. The duration is measured by the source's
// Clock.
func WithAfter(after func(time.Duration) <-chan time.Time) SVIDOption {
	return func(s *SVIDSource) { s.after = after }
}

// SVIDSource holds the current X.509-SVID of one identity and renews it at
// RenewFraction of its lifetime, like a Linkerd proxy's identity client. It is
// an x509svid.Source: TLS configs built on it (ServerTLS, ClientTLS) pick up
// each new certificate at their next handshake, while connections made
// earlier keep theirs, so rotation drops no traffic.
//
// Create it with NewSVIDSource, which issues the first SVID, so the source is
// usable at once; then Run it for renewals. All methods are safe for
// concurrent use. The current SVID is an immutable snapshot behind an
// atomic pointer; mu only serialises file output.
type SVIDSource struct {
	issuer Issuer
	ca     *CA // for ca.pem; nil when the issuer is not a *CA
	id     spiffeid.ID
	clk    Clock
	log    *slog.Logger
	after  func(time.Duration) <-chan time.Time

	cur      atomic.Pointer[issued]
	renewals atomic.Int64

	mu      sync.Mutex     // guards dir, written and the files in dir
	dir     string         // "" = no file output
	written *x509svid.SVID // the SVID the files in dir hold
}

var (
	_ x509svid.Source = (*SVIDSource)(nil)
	_ Issuer          = (*CA)(nil)
)

// issued is one SVID and when to renew it.
type issued struct {
	svid    *x509svid.SVID
	renewAt time.Time
}

// NewSVIDSource issues the first SVID for id from ca and returns a source
// that keeps it current once Run is called. nil clk means SystemClock and
// nil log discards. Without WithAfter, Run waits with time.After.
func NewSVIDSource(ca *CA, id spiffeid.ID, clk Clock, log *slog.Logger, opts ...SVIDOption) (*SVIDSource, error) {
	if ca == nil {
		return nil, errors.New("svid source: nil CA")
	}
	return newSVIDSource(ca, ca, id, clk, log, opts...)
}

func newSVIDSource(iss Issuer, ca *CA, id spiffeid.ID, clk Clock, log *slog.Logger, opts ...SVIDOption) (*SVIDSource, error) {
	if clk == nil {
		clk = SystemClock{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &SVIDSource{issuer: iss, ca: ca, id: id, clk: clk, log: log, after: time.After}
	for _, o := range opts {
		o(s)
	}
	is, err := s.issue()
	if err != nil {
		return nil, err
	}
	s.cur.Store(is)
	return s, nil
}

// ID returns the SPIFFE ID the source holds an SVID for.
func (s *SVIDSource) ID() spiffeid.ID { return s.id }

// GetX509SVID returns the current SVID; it implements x509svid.Source. The
// SVID is shared and must not be modified.
func (s *SVIDSource) GetX509SVID() (*x509svid.SVID, error) {
	return s.cur.Load().svid, nil
}

// Renewals returns how many times the SVID was replaced since the first.
func (s *SVIDSource) Renewals() int { return int(s.renewals.Load()) }

// RenewAt returns when Run will replace the current SVID.
func (s *SVIDSource) RenewAt() time.Time { return s.cur.Load().renewAt }

// Run renews the SVID at RenewFraction of each one's lifetime, by the
// source's Clock, until ctx ends; it then returns nil. A failed renewal is
// logged and retried every 30 s (the current SVID stays in force meanwhile),
// and so is a failed file write. Run must be called at most once.
func (s *SVIDSource) Run(ctx context.Context) error {
	for {
		cur := s.cur.Load()
		wait := cur.renewAt.Sub(s.clk.Now())
		if err := s.syncFiles(); err != nil {
			s.log.Warn("svid files not written", "spiffe_id", s.id.String(), "err", err)
			wait = min(wait, renewRetry)
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-s.after(wait):
			}
			// Re-read the clock: a real timer can fire late, a fake one early.
			continue
		}
		if err := s.Renew(); err != nil {
			level := slog.LevelWarn
			if !s.clk.Now().Before(cur.svid.Certificates[0].NotAfter) {
				level = slog.LevelError // peers now refuse this identity
			}
			s.log.Log(ctx, level, "svid renewal failed", "spiffe_id", s.id.String(), "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-s.after(renewRetry):
			}
		}
	}
}

// Renew replaces the SVID now, whatever its age, and rewrites the files if
// WriteFiles was called. Run calls it when renewal is due; an operator may
// call it to rotate early. If issuing fails, the current SVID stays in force;
// if only the file write fails, the new SVID is in force for TLS and Run
// retries the files.
func (s *SVIDSource) Renew() error {
	is, err := s.issue()
	if err != nil {
		return err
	}
	s.cur.Store(is)
	s.renewals.Add(1)
	leaf := is.svid.Certificates[0]
	s.log.Info("svid renewed", "spiffe_id", s.id.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter, "renew_at", is.renewAt)
	return s.syncFiles()
}

// syncFiles writes the current SVID's files if WriteFiles was called and
// they do not hold it yet.
func (s *SVIDSource) syncFiles() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load().svid
	if s.dir == "" || s.written == cur {
		return nil
	}
	if err := s.writeFilesLocked(cur); err != nil {
		return err
	}
	s.written = cur
	return nil
}

func (s *SVIDSource) issue() (*issued, error) {
	now := s.clk.Now()
	svid, err := s.issuer.Issue(s.id)
	if err != nil {
		return nil, fmt.Errorf("svid source %s: %w", s.id, err)
	}
	if len(svid.Certificates) == 0 {
		return nil, fmt.Errorf("svid source %s: issuer returned no certificate", s.id)
	}
	// Lifetime is counted from the issue time, not from the backdated
	// NotBefore, so the 20 s of skew allowance do not bring renewal forward.
	life := svid.Certificates[0].NotAfter.Sub(now)
	return &issued{svid: svid, renewAt: now.Add(time.Duration(float64(life) * RenewFraction))}, nil
}

// WriteFiles makes the source keep cert.pem, key.pem and ca.pem in dir
// current: it writes them now and again after every renewal. The three files
// change together and atomically: they are symbolic links into a "..data"
// link to a fresh directory that is swapped by rename (kubelet's atomic
// writer), so a reader never sees a certificate with another SVID's key.
// dir is created (mode 0700) if needed. The source must have been made by
// NewSVIDSource, which knows the CA's root.
func (s *SVIDSource) WriteFiles(dir string) error {
	if s.ca == nil {
		return errors.New("svid source: file output needs the CA's root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("svid files: %w", err)
	}
	s.mu.Lock()
	s.dir, s.written = dir, nil
	s.mu.Unlock()
	return s.syncFiles()
}

// writeFilesLocked writes svid's files into a new directory next to the
// links, points "..data" at it by an atomic rename, and removes the previous
// directory. s.mu is held.
func (s *SVIDSource) writeFilesLocked(svid *x509svid.SVID) error {
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("svid files: %w", err)
	}
	newDir, err := os.MkdirTemp(s.dir, "..svid-")
	if err != nil {
		return fmt.Errorf("svid files: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CertFileName, certPEM, 0o644},
		{KeyFileName, keyPEM, 0o600},
		{CAFileName, s.ca.RootPEM(), 0o644},
	}
	for _, f := range files {
		if err := writeNew(filepath.Join(newDir, f.name), f.data, f.mode); err != nil {
			return errors.Join(fmt.Errorf("svid files: %w", err), os.RemoveAll(newDir))
		}
	}
	dataLink := filepath.Join(s.dir, "..data")
	oldDir, _ := os.Readlink(dataLink) // absent on the first write
	tmpLink := filepath.Join(s.dir, "..data_tmp")
	_ = os.Remove(tmpLink) // a leftover of a crash between Symlink and Rename
	if err := os.Symlink(filepath.Base(newDir), tmpLink); err != nil {
		return errors.Join(fmt.Errorf("svid files: %w", err), os.RemoveAll(newDir))
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return errors.Join(fmt.Errorf("svid files: %w", err), os.RemoveAll(newDir))
	}
	for _, f := range files {
		if err := ensureLink(s.dir, f.name); err != nil {
			return fmt.Errorf("svid files: %w", err)
		}
	}
	if oldDir != "" && oldDir != filepath.Base(newDir) {
		if err := os.RemoveAll(filepath.Join(s.dir, filepath.Base(oldDir))); err != nil {
			s.log.Warn("svid files: remove old directory", "err", err)
		}
	}
	return nil
}

// ensureLink makes dir/name a symbolic link to ..data/name, replacing a
// regular file of that name atomically.
func ensureLink(dir, name string) error {
	p := filepath.Join(dir, name)
	target := filepath.Join("..data", name)
	if t, err := os.Readlink(p); err == nil && t == target {
		return nil
	}
	tmp := p + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// writeNew writes a new file. Not fsynced: the files only outlive weft's
// process by accident (a crash), and the next start issues every identity
// afresh and rewrites them before any function runs, while readers see them
// through the page cache; the three fsyncs made a function's first start
// about 1.3 ms slower.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return errors.Join(err, f.Close())
	}
	return f.Close()
}
