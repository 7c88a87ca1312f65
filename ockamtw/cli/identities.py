"""
Identities and vaults on the command line, as Ockam 0.83 names and prints
them.

  - C{$OCKAM_HOME/identities/NAME.json}: a named identity (see
    L{ockamtw.secure.identity}); its key is kept in a vault.
  - C{$OCKAM_HOME/vaults/NAME.json}: a software vault (see
    L{ockamtw.secure.vault}), mode 0600.
  - The default identity and the default vault are kept in C{config.json}
    (C{default_identity}, C{default_vault}): the first one created, until
    C{identity default} / C{vault default} says otherwise.  Without a
    recorded default, an identity named C{default} (made by C{ockam
    enroll}) is the default identity.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

from ..control import state as st
from . import home as h
from .nodes import CLIError, IOERR, os_error
from .output import CHECK, change_history_text, table


def random_name() -> str:
    return os.urandom(4).hex()


def _check_name(name: str, what: str) -> str:
    if not st.valid_node_name(name):
        article = "an" if what[:1] in "aeiou" else "a"
        raise CLIError(f"not {article} {what} name: {name!r}")
    return name


# --- vaults --------------------------------------------------------------------------------------------


def vaults_dir(home: str) -> str:
    return os.path.join(home, "vaults")


def vault_path(home: str, name: str) -> str:
    return os.path.join(vaults_dir(home), name + ".json")


def vault_names(home: str) -> List[str]:
    try:
        entries = os.listdir(vaults_dir(home))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise CLIError(f"cannot list vaults: {os_error(e)}") from None
    return sorted(e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith("."))


def default_vault(home: str) -> Optional[str]:
    name = h.read_config(home).get("default_vault")
    if isinstance(name, str) and os.path.exists(vault_path(home, name)):
        return name
    return None


def _set_default(home: str, key: str, name: Optional[str]) -> None:
    config = h.read_config(home)
    if name is None:
        config.pop(key, None)
    else:
        config[key] = name
    h.write_config(home, config)


def open_vault(home: str, name: str):
    from ..secure.vault import SoftwareVault

    _check_name(name, "vault")
    path = vault_path(home, name)
    if not os.path.exists(path):
        raise CLIError(f"Vault '{name}' not found (see: ockam vault list)")
    return SoftwareVault(path)


def create_vault(c, name: str):
    """
    A new vault; the first one becomes the default.
    """
    from ..secure.errors import IdentityError
    from ..secure.vault import SoftwareVault

    home = c.nodes.home
    _check_name(name, "vault")
    try:
        st.private_dir(vaults_dir(home))
        vault = SoftwareVault.create(vault_path(home, name))
    except OSError as e:
        raise CLIError(f"cannot create vault {name}: {os_error(e)}") from None
    except IdentityError as e:
        raise CLIError(str(e)) from None
    if default_vault(home) is None:
        _set_default(home, "default_vault", name)
    return vault


def _vault_users(home: str, name: str) -> List[str]:
    """
    The identities whose keys are in vault C{name}.
    """
    users = []
    for identity in identity_names(home):
        if _identity_doc(home, identity).get("vault") == name:
            users.append(identity)
    return users


async def vault_create(c):
    a = c.args
    if a.aws_kms:
        raise CLIError("AWS KMS vaults are not supported by ockamtw (a vault is a file of software keys)")
    if a.path is not None:
        raise CLIError("--path is not supported: a vault is kept in $OCKAM_HOME/vaults/NAME.json")
    name = a.name if a.name is not None else random_name()
    vault = create_vault(c, name)
    c.out.emit({"name": name, "path": vault.path, "type": "OCKAM"}, f"Vault created: {name}")


def _vault_lines(home: str, name: str) -> List[str]:
    return [f"Name: {name}", "Type: OCKAM"]


def _vault_dict(home: str, name: str) -> dict:
    return {"name": name, "type": "OCKAM", "path": vault_path(home, name), "default": default_vault(home) == name,
            "identities": _vault_users(home, name)}


async def vault_list(c):
    home = c.nodes.home
    names = vault_names(home)
    if not names and not c.out.json:
        raise CLIError("No vaults registered on this system!")
    infos = [_vault_dict(home, n) for n in names]
    if getattr(c.args, "table", False):
        text = table(["Vault", "Type", "Default", "Identities"],
                     [[i["name"], i["type"], "yes" if i["default"] else "", ", ".join(i["identities"])] for i in infos])
    else:
        lines = []
        for i, name in enumerate(names):
            lines.append(f"Vault[{i}]:")
            lines += [f"  {line}" for line in _vault_lines(home, name)]
        text = "\n".join(lines)
    c.out.emit(infos, text)


async def vault_show(c):
    home = c.nodes.home
    name = c.args.name or default_vault(home)
    if name is None:
        raise CLIError("there is no default vault (create one with: ockam vault create)")
    open_vault(home, name)
    c.out.emit(_vault_dict(home, name), "\n".join(["Vault:"] + [f"  {l}" for l in _vault_lines(home, name)]))


async def vault_delete(c):
    from ..secure.errors import IdentityError

    home = c.nodes.home
    name = c.args.name
    vault = open_vault(home, name)
    users = _vault_users(home, name)
    if users:
        raise CLIError(
            f"vault '{name}' keeps the keys of identity {', '.join(users)} (delete it first: ockam identity delete {users[0]})"
        )
    try:
        vault.delete()
    except IdentityError as e:
        raise CLIError(str(e)) from None
    if default_vault(home) is None and h.read_config(home).get("default_vault") == name:
        _set_default(home, "default_vault", None)
    c.out.shell({"vault": {"name": name}}, f"{CHECK}Vault with name '{name}' has been deleted.", name)


async def vault_default(c):
    home = c.nodes.home
    name = c.args.name
    open_vault(home, name)
    if default_vault(home) == name:
        raise CLIError(f"Vault '{name}' is already the default")
    _set_default(home, "default_vault", name)
    c.out.emit({"name": name, "default": True}, f"Vault '{name}' is now the default")


async def vault_attach_key(c):
    raise CLIError("AWS KMS keys are not supported by ockamtw (vaults keep software keys only)")


# --- identities ----------------------------------------------------------------------------------------


def identity_names(home: str) -> List[str]:
    d = st.identities_dir(home)
    try:
        entries = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise CLIError(f"cannot list identities: {os_error(e)}") from None
    return sorted(f[: -len(".json")] for f in entries if f.endswith(".json") and not f.startswith("."))


def _identity_doc(home: str, name: str) -> dict:
    try:
        with open(st.identity_path(home, name), "rb") as f:
            doc = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def default_identity(home: str) -> Optional[str]:
    """
    The default identity: the one recorded, else C{default} if there is
    one, else the enrolled one.
    """
    name = h.read_config(home).get("default_identity")
    if isinstance(name, str) and st.valid_node_name(name) and os.path.exists(st.identity_path(home, name)):
        return name
    if os.path.exists(st.identity_path(home, "default")):
        return "default"
    return h.enrolled_identity(home)


def load_identity(home: str, name: str):
    from ..secure.errors import IdentityError
    from ..secure.identity import LocalIdentity

    _check_name(name, "identity")
    path = st.identity_path(home, name)
    if not os.path.exists(path):
        raise CLIError(f"Identity '{name}' not found (see: ockam identity list)")
    try:
        return LocalIdentity.load(path)
    except IdentityError as e:
        raise CLIError(f"identity {name!r}: {e}") from None


def create_identity(c, name: str, vault_name: Optional[str] = None, say=None):
    """
    A new identity C{name} whose key is kept in vault C{vault_name} (by
    default the default vault, made when there is none: C{say} is told
    its name).  The first identity becomes the default.
    """
    from ..secure.errors import IdentityError
    from ..secure.identity import LocalIdentity

    home = c.nodes.home
    _check_name(name, "identity")
    path = st.identity_path(home, name)
    if os.path.exists(path):
        raise CLIError(f"identity '{name}' already exists (see: ockam identity list)")
    if vault_name is not None:
        vault = open_vault(home, vault_name)
    else:
        default = default_vault(home)
        if default is not None:
            vault = open_vault(home, default)
        else:
            vault_name = random_name()
            try:
                vault = create_vault(c, vault_name)
            except CLIError as e:
                raise CLIError(f"cannot create identity {name}: {e}") from None
            if say is not None:
                say(f"Default vault created: {vault_name}")
    try:
        st.secure_identities_dir(home)
    except OSError as e:
        raise CLIError(f"cannot create identity {name}: {os_error(e)}") from None
    identity = LocalIdentity.create()
    try:
        _create_exclusively(path)
        identity.save(path, vault=vault)
    except FileExistsError:
        raise CLIError(f"identity '{name}' already exists (see: ockam identity list)") from None
    except (IdentityError, OSError) as e:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise CLIError(f"cannot create identity {name}: {e}") from None
    recorded = h.read_config(home).get("default_identity")
    if not (isinstance(recorded, str) and os.path.exists(st.identity_path(home, recorded))):
        if default_identity(home) in (None, name):
            _set_default(home, "default_identity", name)
    return identity, vault


def _create_exclusively(path: str) -> None:
    """
    Claim C{path} (an empty 0600 file) so that of two commands creating the
    same identity, one fails.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)


async def identity_create(c):
    a = c.args
    name = a.name if a.name is not None else random_name()
    notes = []
    identity, vault = create_identity(c, name, a.vault, say=notes.append)
    info = {"name": name, "identifier": identity.identifier, "vault": vault.name}
    if not c.out.json:
        for note in notes:
            print(note)
    c.out.emit(info, f"Identity created: {identity.identifier}")


async def identity_show(c):
    a = c.args
    if a.encoding is not None and not a.full:
        a.parser.error("--encoding requires --full")
    if a.node:
        name = c.nodes.require(a.node)
        info = await c.client(name).call("GET", "identity")
        from ..secure.identity import Identity

        identity = Identity.from_export(bytes.fromhex(info["export"]))
    else:
        home = c.nodes.home
        name = a.name or default_identity(home)
        if name is None:
            raise CLIError("Default identity not found. Have you run 'ockam identity create'?")
        identity = load_identity(home, name)
    if a.full:
        export = identity.export().hex()
        text = export if a.encoding == "hex" else change_history_text(identity).rstrip("\n")
        c.out.emit({"identity": export}, text)
    else:
        c.out.emit({"identity_id": identity.identifier}, identity.identifier)


async def identity_list(c):
    home = c.nodes.home
    names = identity_names(home)
    if not names and not c.out.json:
        raise CLIError("No identities registered on this system!", code=IOERR)
    default = default_identity(home)
    infos, blocks = [], []
    for i, name in enumerate(names):
        identity = load_identity(home, name)
        doc = _identity_doc(home, name)
        infos.append({"name": name, "identifier": identity.identifier, "default": name == default,
                      "vault": doc.get("vault")})
        lines = [f"Identity[{i}]:", f"  Name: {name}{' (default)' if name == default else ''}"]
        if c.args.full:
            lines.append("  " + change_history_text(identity).rstrip("\n"))
        else:
            lines.append(f"  Identifier: {identity.identifier}")
        blocks.append("\n".join(lines))
    if c.args.table:
        text = table(["Identity", "Identifier"], [[i["name"], i["identifier"]] for i in infos])
    else:
        text = "\n\n".join(blocks)
    c.out.emit(infos, text)


async def identity_default(c):
    home = c.nodes.home
    name = c.args.name
    load_identity(home, name)
    if h.read_config(home).get("default_identity") == name:
        raise CLIError(f"Identity '{name}' is already the default")
    _set_default(home, "default_identity", name)
    c.out.emit({"name": name, "default": True}, f"Identity '{name}' is now the default")


async def identity_delete(c):
    """
    Delete a named identity and its key; refused while a node uses it.
    """
    home = c.nodes.home
    name = _check_name(c.args.name, "identity")
    identity = load_identity(home, name)
    users = []
    for n in c.nodes.names():
        try:
            uses = c.nodes.state(n).get("identity")
        except st.StateError as e:
            raise CLIError(f"cannot tell whether node {n} uses identity {name!r}: {e.problem}") from None
        if uses == name:
            users.append(n)
    if users:
        more = f" (and {', '.join(users[1:])})" if len(users) > 1 else ""
        raise CLIError(
            f"Can't delete identity '{name}' because is currently in use by node '{users[0]}'{more} "
            f"(delete the node first: ockam node delete {users[0]})"
        )
    doc = _identity_doc(home, name)
    path = st.identity_path(home, name)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise CLIError(f"Identity '{name}' not found (see: ockam identity list)") from None
    except OSError as e:
        raise CLIError(f"cannot delete identity {name}: {os_error(e, path)}") from None
    if isinstance(doc.get("vault"), str) and isinstance(doc.get("key_id"), str):
        from ..secure.errors import IdentityError

        try:
            open_vault(home, doc["vault"]).remove(doc["key_id"])
        except (CLIError, IdentityError):
            pass  # the identity is gone; a vault that cannot be written keeps an unused key
    if h.read_config(home).get("default_identity") == name:
        _set_default(home, "default_identity", None)
    c.out.emit({"name": name, "identifier": identity.identifier}, f"Identity '{name}' deleted")
