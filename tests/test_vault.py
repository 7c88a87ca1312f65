"""
The software vault (L{ockamtw.secure.vault}) and identities whose key it
keeps (L{ockamtw.secure.identity.LocalIdentity.save} with a vault).
"""

from __future__ import annotations

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from ockamtw.secure.errors import IdentityError
from ockamtw.secure.identity import LocalIdentity
from ockamtw.secure.vault import SoftwareVault, VaultError, key_id


class VaultTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.home, "vaults"))
        os.makedirs(os.path.join(self.home, "identities"))
        self.path = os.path.join(self.home, "vaults", "v1.json")

    def test_create_put_get(self) -> None:
        vault = SoftwareVault.create(self.path)
        self.assertEqual(vault.name, "v1")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(vault.secrets(), {})
        vault.put("k1", b"\x01" * 32)
        self.assertEqual(SoftwareVault(self.path).get("k1"), b"\x01" * 32)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        vault.remove("k1")
        self.assertRaises(VaultError, vault.get, "k1")
        with self.assertRaises(VaultError) as caught:
            SoftwareVault.create(self.path)
        self.assertIn("already exists", str(caught.exception))

    def test_refused_files(self) -> None:
        vault = SoftwareVault.create(self.path)
        os.chmod(self.path, 0o644)
        with self.assertRaises(VaultError) as caught:
            vault.secrets()
        self.assertIn("chmod 600", str(caught.exception))
        os.chmod(self.path, 0o600)
        with open(self.path, "w") as f:
            f.write("{}")
        self.assertRaises(VaultError, vault.secrets)
        os.unlink(self.path)
        with self.assertRaises(VaultError) as caught:
            vault.secrets()
        self.assertIn("no vault 'v1'", str(caught.exception))

    def test_identity_in_a_vault(self) -> None:
        """
        An identity saved with a vault keeps no key in its file; it loads
        with the key from the vault next to its directory, and not without
        it.
        """
        vault = SoftwareVault.create(self.path)
        identity = LocalIdentity.create()
        path = os.path.join(self.home, "identities", "bob.json")
        identity.save(path, vault=vault)
        with open(path) as f:
            doc = json.load(f)
        self.assertNotIn("secret_key", doc)
        self.assertEqual((doc["vault"], doc["key_id"]), ("v1", key_id(identity.public_key)))
        loaded = LocalIdentity.load(path)
        self.assertEqual(loaded.identifier, identity.identifier)
        self.assertEqual(loaded.sign(b"x"), identity.sign(b"x"))
        vault.remove(doc["key_id"])
        with self.assertRaises(IdentityError) as caught:
            LocalIdentity.load(path)
        self.assertIn("has no key", str(caught.exception))
