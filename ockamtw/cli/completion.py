"""
C{ockam completion --shell SHELL}: a completion script for bash, zsh or
fish, made from the command line's own parser (its commands, actions and
options), so it never lists a command that is not there.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Tuple


def _subcommands(p: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(p: argparse.ArgumentParser) -> List[str]:
    out = []
    for action in p._actions:
        if action.help == argparse.SUPPRESS:
            continue
        out += [o for o in action.option_strings if o.startswith("--")]
    return sorted(set(out))


def tree(p: argparse.ArgumentParser) -> List[Tuple[str, List[str], List[str]]]:
    """
    C{(path, words, options)} for the top level and every command and
    action: the words that may follow the path, and its options.
    """
    out = []

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        subs = _subcommands(parser)
        out.append((path, sorted(subs), _options(parser)))
        for name, child in sorted(subs.items()):
            walk(f"{path} {name}".strip(), child)

    walk("", p)
    return out


def script(p: argparse.ArgumentParser, shell: str) -> str:
    entries = tree(p)
    if shell == "fish":
        return _fish(entries)
    bash = _bash(entries)
    if shell == "zsh":
        return "#compdef ockam\nautoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash


def _bash(entries) -> str:
    lines = [
        "# ockam completion for bash (ockamtw)",
        "_ockam() {",
        "    local cur path i w",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    path=""',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "$w" in -*) continue ;; esac',
        '        case " $(_ockam_words "$path") " in *" $w "*) path="${path:+$path }$w" ;; esac',
        "    done",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$(_ockam_options "$path")" -- "$cur"))',
        "    else",
        '        COMPREPLY=($(compgen -W "$(_ockam_words "$path")" -- "$cur"))',
        "    fi",
        "}",
        "_ockam_words() {",
        '    case "$1" in',
    ]
    for path, words, _ in entries:
        lines.append(f'        "{path}") echo "{" ".join(words)}" ;;')
    lines += ["    esac", "}", "_ockam_options() {", '    case "$1" in']
    for path, _, options in entries:
        lines.append(f'        "{path}") echo "{" ".join(options)}" ;;')
    lines += ["    esac", "}", "complete -F _ockam ockam", ""]
    return "\n".join(lines)


def _fish(entries) -> str:
    lines = ["# ockam completion for fish (ockamtw)", "complete -c ockam -f"]
    for path, words, options in entries:
        if path:
            parts = path.split()
            condition = "; and ".join(f"__fish_seen_subcommand_from {w}" for w in parts)
            if words:
                condition += f"; and not __fish_seen_subcommand_from {' '.join(words)}"
            cond = f"-n '{condition}'"
        else:
            cond = "-n '__fish_use_subcommand'"
        for w in words:
            lines.append(f"complete -c ockam {cond} -a {w}")
        for o in options:
            lines.append(f"complete -c ockam {cond} -l {o[2:]}")
    return "\n".join(lines) + "\n"
