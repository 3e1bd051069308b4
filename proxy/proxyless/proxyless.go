package proxyless

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/rampart-mesh/rampart/authz"
	"github.com/rampart-mesh/rampart/ca"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The files in the certificate directory, named as Istio's agent names them.
const (
	CertChainFile = "cert-chain.pem" // the SVID, leaf first
	KeyFile       = "key.pem"        // its private key (PKCS#8), mode 0600
	RootCertFile  = "root-cert.pem"  // every X.509 root of the trust bundle
)

// Generator is the node metadata GENERATOR rampartd serves gRPC's shape of
// configuration to (Istio's value).
const Generator = "grpc"

// CertProviderInstance is the certificate provider instance rampartd's
// clusters name (Istio's name).
const CertProviderInstance = "default"

// Source is what the writer reads: the agent's SVID and bundle, and when they change.
type Source interface {
	x509svid.Source
	x509bundle.Source
	Ready() <-chan struct{}
	Updated() <-chan struct{}
	TrustDomain() spiffeid.TrustDomain
}

// Config configures a Writer.
type Config struct {
	Source Source
	// CertDir receives CertChainFile, KeyFile and RootCertFile.
	CertDir string
	// Bootstrap is the gRPC xDS bootstrap file to write (the app's
	// GRPC_XDS_BOOTSTRAP).
	Bootstrap string
	// ControlPlane is rampartd's address as the app dials it, host:port. The
	// host must be one rampartd's serving certificate names (its --listen
	// host, localhost or a loopback address): gRPC checks it.
	ControlPlane string
	// Workload names the app to rampartd (node id and metadata).
	Workload authz.Workload
	// Refresh is how often grpc-go re-reads the files. Default 60 s.
	Refresh time.Duration
	Log     *slog.Logger
}

// Writer keeps the files and the bootstrap current.
type Writer struct {
	cfg     Config
	log     *slog.Logger
	written atomic.Bool
}

// New validates cfg and fills defaults. It does no I/O.
func New(cfg Config) (*Writer, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("proxyless: Source is required")
	case cfg.CertDir == "":
		return nil, errors.New("proxyless: a certificate directory is required")
	case cfg.Bootstrap == "":
		return nil, errors.New("proxyless: a bootstrap path is required")
	case cfg.ControlPlane == "":
		return nil, errors.New("proxyless: the control plane address is required")
	case cfg.Workload.Name == "" || cfg.Workload.Namespace == "":
		return nil, errors.New("proxyless: the workload's namespace and name are required")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Writer{cfg: cfg, log: cfg.Log.With("component", "proxyless")}, nil
}

// Ready reports whether the files and the bootstrap have been written.
func (w *Writer) Ready() bool { return w.written.Load() }

// Run writes the files once the agent has its first SVID, then again on
// every rotation of the SVID or the bundle, until ctx ends. A write that
// fails is logged and retried on the next change or after a few seconds; the
// app keeps the last good files meanwhile.
func (w *Writer) Run(ctx context.Context) error {
	select {
	case <-w.cfg.Source.Ready():
	case <-ctx.Done():
		return nil
	}
	for {
		updated := w.cfg.Source.Updated() // before reading, so no change is missed
		retry := (<-chan time.Time)(nil)
		if err := w.write(); err != nil {
			w.log.Error("writing the gRPC certificate files or bootstrap failed; the app keeps the last ones", "err", err)
			retry = time.After(5 * time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-updated:
		case <-retry:
		}
	}
}

func (w *Writer) write() error {
	svid, err := w.cfg.Source.GetX509SVID()
	if err != nil {
		return err
	}
	b, err := w.cfg.Source.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return err
	}
	roots := b.X509Authorities()
	if len(roots) == 0 {
		return fmt.Errorf("the trust bundle of %s has no X.509 roots", svid.ID.TrustDomain())
	}
	key, err := ca.EncodeKeyPEM(svid.PrivateKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(w.cfg.CertDir, 0o755); err != nil {
		return fmt.Errorf("certificate directory: %w", err)
	}
	// The key first: grpc-go reads the pair on its refresh and keeps its last
	// good pair when it catches the two files between their renames.
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{KeyFile, key, 0o600},
		{CertChainFile, ca.EncodeCertsPEM(svid.Certificates), 0o644},
		{RootCertFile, ca.EncodeCertsPEM(roots), 0o644},
	}
	for _, f := range files {
		if err := ca.WriteFileAtomic(filepath.Join(w.cfg.CertDir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write %s: %w", filepath.Join(w.cfg.CertDir, f.name), err)
		}
	}
	boot, err := w.bootstrap(svid.ID)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(w.cfg.Bootstrap); err != nil || !bytes.Equal(old, boot) {
		if err := os.MkdirAll(filepath.Dir(w.cfg.Bootstrap), 0o755); err != nil {
			return fmt.Errorf("bootstrap directory: %w", err)
		}
		if err := ca.WriteFileAtomic(w.cfg.Bootstrap, boot, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", w.cfg.Bootstrap, err)
		}
		w.log.Info("gRPC xDS bootstrap written", "path", w.cfg.Bootstrap, "node", nodeID(svid.ID, w.cfg.Workload.Name), "control_plane", w.cfg.ControlPlane)
	}
	leaf := svid.Certificates[0]
	w.log.Info("gRPC certificate files written", "dir", w.cfg.CertDir, "spiffe_id", svid.ID.String(),
		"serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "roots", len(roots))
	w.written.Store(true)
	return nil
}

func nodeID(id spiffeid.ID, workload string) string { return id.String() + "~" + workload }

// bootstrap is grpc-go's xDS bootstrap (gRFC A27, A29, A65): rampartd over
// TLS with the workload's certificate (channel_creds "tls"), the node, and
// the file_watcher certificate provider rampartd's clusters name.
func (w *Writer) bootstrap(id spiffeid.ID) ([]byte, error) {
	files := map[string]any{
		"certificate_file":    filepath.Join(w.cfg.CertDir, CertChainFile),
		"private_key_file":    filepath.Join(w.cfg.CertDir, KeyFile),
		"ca_certificate_file": filepath.Join(w.cfg.CertDir, RootCertFile),
		"refresh_interval":    fmt.Sprintf("%gs", w.cfg.Refresh.Seconds()),
	}
	labels := map[string]string{}
	for k, v := range w.cfg.Workload.Labels {
		labels[k] = v
	}
	doc := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      w.cfg.ControlPlane,
			"channel_creds":   []any{map[string]any{"type": "tls", "config": files}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{
			"id": nodeID(id, w.cfg.Workload.Name),
			"metadata": map[string]any{
				"GENERATOR": Generator,
				"NAME":      w.cfg.Workload.Name,
				"NAMESPACE": w.cfg.Workload.Namespace,
				"LABELS":    labels,
			},
		},
		"certificate_providers": map[string]any{
			CertProviderInstance: map[string]any{"plugin_name": "file_watcher", "config": files},
		},
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
