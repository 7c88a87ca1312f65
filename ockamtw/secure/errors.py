"""
Exceptions of the secure-channel layer.

Bad bytes in a secure-channel message raise L{ockamtw.errors.WireError}
(from L{ockamtw.secure.codec}); everything cryptographic raises one of the
classes below, never an exception of the C{cryptography} package.
"""

from ..errors import OckamError


class SecureChannelError(OckamError):
    """
    A cryptographic failure of a secure channel: a Noise handshake message
    that does not authenticate or has the wrong size, a handshake step taken
    out of order, a transport ciphertext that does not decrypt, an exhausted
    nonce, or a peer identity that is refused.
    """


class IdentityError(SecureChannelError):
    """
    An identity that cannot be used: an export whose change history does not
    verify (bad signature, wrong change id or previous change id, missing or
    extra signatures, unsupported key type, malformed or trailing bytes), a
    signature that does not verify, or an identity file that cannot be
    loaded.

    It derives from L{SecureChannelError} so that a channel can catch both
    with one clause.
    """
