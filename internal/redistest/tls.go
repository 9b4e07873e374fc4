package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names of the generated TLS material in a Server's Dir.
const (
	caCertFile     = "ca.crt"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	clientCertFile = "client.crt"
	clientKeyFile  = "client.key"
)

// writeTLSFiles generates, in dir, a CA, a server certificate for 127.0.0.1
// and localhost, and a client certificate, all ECDSA P-256 and signed by the
// CA. It returns the client's files and a client config trusting the CA and
// presenting the client certificate.
func writeTLSFiles(dir string) (TLSFiles, *tls.Config, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return TLSFiles{}, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return TLSFiles{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return TLSFiles{}, nil, err
	}
	if err := writePEM(filepath.Join(dir, caCertFile), "CERTIFICATE", caDER); err != nil {
		return TLSFiles{}, nil, err
	}

	leaf := func(serial int64, cn string, usage []x509.ExtKeyUsage, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, certFile), "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(filepath.Join(dir, keyFile), "PRIVATE KEY", keyDER)
	}
	// The server certificate may also authenticate redis-server as a client
	// (replication, cluster bus), so it carries both usages.
	if err := leaf(2, "redistest server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		serverCertFile, serverKeyFile); err != nil {
		return TLSFiles{}, nil, err
	}
	if err := leaf(3, "redistest client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		clientCertFile, clientKeyFile); err != nil {
		return TLSFiles{}, nil, err
	}

	files := TLSFiles{
		CA:   filepath.Join(dir, caCertFile),
		Cert: filepath.Join(dir, clientCertFile),
		Key:  filepath.Join(dir, clientKeyFile),
	}
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		return TLSFiles{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		ServerName:   "127.0.0.1",
	}
	return files, cfg, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// noTLSSupport reports whether a redis-server log says that it was built
// without TLS: 7.2+ logs "Missing implement of connection type tls", older
// builds reject the tls-* options as bad directives.
func noTLSSupport(log string) bool {
	l := strings.ToLower(log)
	return strings.Contains(l, "connection type tls") ||
		(strings.Contains(l, "bad directive") && strings.Contains(l, "tls-"))
}
