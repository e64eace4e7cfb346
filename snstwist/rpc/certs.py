"""
The cluster's certificate authority and the certificates of its processes.

A cluster has its own CA: it signs the certificate of every router and
server (each carries the name L{CLUSTER_NAME}, which every channel of the
cluster checks instead of a host name; the hosts' names and addresses are
in it too, for other TLS tools), and clients trust exactly that CA
(C{--tls-ca}).  The same certificate serves a process's ports and its calls
to its peers' cluster ports, which require one (mutual TLS).  C{sns-cluster}
makes a CA and one certificate in its directory; C{sns-admin certs} makes
them for a cluster on several hosts.

Keys are ECDSA P-256, written with mode 0600; nothing here runs on a
reactor.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from snstwist.rpc.grpcbridge import CLUSTER_NAME

CA_DAYS = 3650
NODE_DAYS = 825


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "snstwist"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path, data, private=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def checkPem(ca, cert=None, key=None):
    """
    Raise L{ValueError} naming the option whose file is not what it must
    be: C{--tls-ca} and C{--tls-cert} PEM certificates, C{--tls-key} a PEM
    private key (contents as bytes; None is not given).  gRPC takes any
    bytes and says only, at the first call, that it could not make a
    handshaker.
    """
    for option, data in (("--tls-ca", ca), ("--tls-cert", cert)):
        if data is not None:
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                raise ValueError("%s: not a PEM certificate" % (option,)) from None
    if key is not None:
        try:
            serialization.load_pem_private_key(key, None)
        except (ValueError, TypeError):
            raise ValueError("--tls-key: not a PEM private key without a passphrase") from None


def makeCA(directory, name="snstwist cluster CA"):
    """Write C{ca.pem} and C{ca.key} (a new CA) into C{directory}; return their paths."""
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(name)
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    caPath, keyPath = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    _write(keyPath, _keyPem(key), private=True)
    _write(caPath, _pem(cert))
    return caPath, keyPath


def _host(name):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def makeNode(directory, name, hosts=(), ca=None, caKey=None):
    """
    Write C{NAME.pem} and C{NAME.key}: a certificate signed by the CA in
    C{directory} (or C{ca}, C{caKey}) for one process, or one host, of the
    cluster.  It names L{CLUSTER_NAME} and C{hosts}, and serves both as a
    server's and as a client's certificate (mutual TLS between processes).
    """
    ca = ca or os.path.join(directory, "ca.pem")
    caKey = caKey or os.path.join(directory, "ca.key")
    with open(ca, "rb") as f:
        caCert = x509.load_pem_x509_certificate(f.read())
    with open(caKey, "rb") as f:
        signer = serialization.load_pem_private_key(f.read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    names = [x509.DNSName(CLUSTER_NAME)] + [_host(h) for h in hosts if h != CLUSTER_NAME]
    cert = (x509.CertificateBuilder().subject_name(_name(name))
            .issuer_name(caCert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(signer, hashes.SHA256()))
    certPath = os.path.join(directory, name + ".pem")
    keyPath = os.path.join(directory, name + ".key")
    _write(keyPath, _keyPem(key), private=True)
    _write(certPath, _pem(cert))
    return certPath, keyPath


def ensureClusterCerts(directory, hosts=()):
    """
    A CA and one node certificate in C{directory}, made if missing (how
    sns-cluster and the tests get theirs).  Returns (ca, cert, key) paths.
    """
    ca = os.path.join(directory, "ca.pem")
    if not os.path.exists(ca):
        makeCA(directory)
    cert, key = os.path.join(directory, "node.pem"), os.path.join(directory, "node.key")
    if not (os.path.exists(cert) and os.path.exists(key)):
        cert, key = makeNode(directory, "node", hosts)
    return ca, cert, key
