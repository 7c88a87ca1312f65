"""
The vector files of C{tests/data} (C{tests/data/README.md} says where each
comes from; L{tests.test_data_files} checks they are unchanged), read once
per test run, with what the tests build from them:

  - C{secure-channel-vectors.json} (L{secure_vectors}, L{handshake_vector})
    and the cacophony Noise XX vector (L{cacophony_vector}), with Ockam's
    handshake keys (L{ockam_pair}) and the three handshake messages
    (L{run_handshake});
  - C{project-api-vectors.json} (L{project_vectors}), with its identities
    rebuilt from their seeds (L{identities}).

A missing or unreadable file fails the calling test; it never skips it.
"""

import json
import os

from ockamtw.secure.identity import LocalIdentity
from ockamtw.secure.noise import HandshakeState

HERE = os.path.dirname(os.path.abspath(__file__))

SECURE_VECTORS_NAME = "secure-channel-vectors.json"
SECURE_VECTORS_COPY = os.path.join(HERE, "data", SECURE_VECTORS_NAME)

CACOPHONY_NAME = "cacophony-XX_25519_AESGCM_SHA256.json"
CACOPHONY_COPY = os.path.join(HERE, "data", "noise", CACOPHONY_NAME)

PROJECT_VECTORS_NAME = "project-api-vectors.json"
PROJECT_VECTORS_COPY = os.path.join(HERE, "data", PROJECT_VECTORS_NAME)

_cache = {}


def _load(testcase, path):
    """
    A parsed vector file; fails (never skips) the calling test when it is
    missing or unreadable.
    """
    if path not in _cache:
        if not os.path.exists(path):
            testcase.fail(f"vector file missing: {path} (see tests/data/README.md)")
        try:
            with open(path, "rb") as f:
                _cache[path] = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            testcase.fail(f"vector file {path} is not valid JSON: {e}")
    return _cache[path]


def x(hexstr):
    """
    The bytes of a vector's hex text.
    """
    return bytes.fromhex(hexstr)


# --- secure channels ----------------------------------------------------------------


def secure_vectors(testcase):
    """
    C{secure-channel-vectors.json}.
    """
    return _load(testcase, SECURE_VECTORS_COPY)


def cacophony_vector(testcase):
    """
    The cacophony XX vector.
    """
    return _load(testcase, CACOPHONY_COPY)


def handshake_vector(testcase):
    """
    Ockam's C{noise_handshake_1}.
    """
    return secure_vectors(testcase)["noise_handshake_1"]


def ockam_pair(v):
    """
    Initiator and responder with the keys of Ockam's vector.
    """
    i = HandshakeState(True, x(v["init_static"]), x(v["init_ephemeral"]), x(v["prologue"]))
    r = HandshakeState(False, x(v["resp_static"]), x(v["resp_ephemeral"]), x(v["prologue"]))
    return i, r


def run_handshake(i, r, payloads=(b"", b"", b"")):
    """
    The three messages between C{i} and C{r}.
    """
    m1 = i.write_message(payloads[0])
    r.read_message(m1)
    m2 = r.write_message(payloads[1])
    i.read_message(m2)
    m3 = i.write_message(payloads[2])
    r.read_message(m3)
    return m1, m2, m3


# --- the project API ------------------------------------------------------------------


def project_vectors(testcase):
    """
    The project API vectors of C{tests/data}.  Fails the calling test
    (never skips) when the file is missing or not JSON.
    """
    return _load(testcase, PROJECT_VECTORS_COPY)


def identities(testcase):
    """
    The vectors' identities as L{LocalIdentity}, rebuilt from their seeds.
    """
    v = project_vectors(testcase)
    return {name: LocalIdentity.create(x(i["ed25519_seed"])) for name, i in v["identities"].items()}
