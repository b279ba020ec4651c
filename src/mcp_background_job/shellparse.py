"""A shell command line split into every simple command it would run, with tree-sitter-bash.

Pure (no I/O) and a leaf: ``policy`` judges what this module finds. The walker knows a fixed set
of node kinds; anything else, a parse error, or a known tree-sitter-bash misparse becomes a
``Problem`` instead of being guessed at (fail closed: the policy decides what a problem means).

What is found, recursively: commands in pipelines, ``&&``/``||``/``;`` lists, subshells, groups,
``if``/``while``/``for``/``case`` bodies, functions, ``$(...)``, backticks and ``<(...)``; the
literal payloads of ``bash -c``/``sh -c``/``eval``/``su -c``/``watch``/``ssh HOST CMD``, of
``echo|printf ... | sh`` and of heredocs fed to a shell; and the command inside wrappers such as
``sudo``, ``env``, ``nice``, ``timeout``, ``xargs`` and ``find -exec``.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

#: Deeper nesting than this (``bash -c`` inside ``bash -c`` ...) is not analysed: refused.
MAX_DEPTH = 12
#: Longer command lines are not analysed: refused (a parser's worst case is not a guardrail's).
MAX_COMMAND_CHARS = 100_000

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "busybox"})
INTERPRETERS = frozenset(
    {"python", "python2", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "deno", "bun"}
)
#: Flags that make an interpreter run the next argument as code.
INLINE_CODE_FLAGS = {
    "python": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",), "node": ("-e", "-p", "--eval"),
    "php": ("-r",), "lua": ("-e",), "deno": ("eval",), "bun": ("-e", "--eval"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a command as far as it can be known without running anything.

    ``text``: its value, unknown expansions kept as written (``$DIR/x``); ``if_empty``: its value
    if every unknown variable were empty (``/x``), or None when that is the same; ``dynamic``: it
    contains something whose value is unknown; ``substituted``: names of the commands whose output
    becomes part of it (``$(...)``, ``<(...)``, or ``xargs`` input).
    """

    text: str
    if_empty: str | None = None
    dynamic: bool = False
    substituted: tuple[str, ...] = ()

    @property
    def values(self) -> tuple[str, ...]:
        return (self.text,) if self.if_empty is None else (self.text, self.if_empty)


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """One command that would run. ``name`` is normalized: no path, no quoting, NFKC."""

    name: str
    args: tuple[Word, ...]
    source: str
    raw_name: str = ""
    upstream: tuple[str, ...] = ()  # names of earlier stages of its pipeline
    stdin_script: bool = False  # a heredoc/herestring or an echoed literal feeds its stdin
    writes: tuple[Word, ...] = ()  # output redirection targets
    via: tuple[str, ...] = ()  # wrappers and payloads it was found inside

    @property
    def line(self) -> str:
        return " ".join([self.name, *(a.text for a in self.args)])


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the analysis cannot vouch for; ``part`` is the text concerned."""

    kind: str  # parse-error | unknown-node | misparse | dynamic | too-deep | too-long | inline-code
    detail: str
    part: str


@dataclass(slots=True)
class Analysis:
    commands: list[SimpleCommand] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: function name -> (names it calls, whether its body pipes or backgrounds)
    functions: dict[str, tuple[set[str], bool]] = field(default_factory=dict)


_PARSER = Parser(Language(tree_sitter_bash.language()))

_TRANSPARENT = frozenset(
    {"program", "list", "subshell", "compound_statement", "do_group", "else_clause",
     "elif_clause", "if_statement", "while_statement", "negated_command", "case_item",
     "variable_assignments"}
)  # fmt: skip
_IGNORED = frozenset({"comment", "heredoc_body", "heredoc_start", "heredoc_end", "file_descriptor",
                      "variable_name", "special_variable_name", "test_operator", "regex",
                      "extglob_pattern", "heredoc_content"})  # fmt: skip
#: Expression and word kinds in which only nested substitutions matter.
_EXPRESSIONS = frozenset(
    {"binary_expression", "unary_expression", "parenthesized_expression", "ternary_expression",
     "postfix_expression", "number", "word", "string", "raw_string", "concatenation",
     "simple_expansion", "expansion", "arithmetic_expansion", "string_content", "ansi_c_string",
     "translated_string", "subscript", "array", "brace_expression", "test_command"}
)  # fmt: skip
_OUTPUT_REDIRECTS = (">", ">>", ">|", "&>", "&>>", ">&", "<>")


def normalize_name(text: str) -> str:
    """``/usr/bin/rm`` -> ``rm``; full-width and compatibility forms folded (NFKC)."""
    base = text.rsplit("/", 1)[-1] if "/" in text.rstrip("/") else text
    return unicodedata.normalize("NFKC", base)


def _unescape_word(raw: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            if raw[i + 1] != "\n":  # a line continuation disappears
                out.append(raw[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_ANSI_C = re.compile(
    r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{1,4}|U[0-9a-fA-F]{1,8}|[0-7]{1,3}|.)", re.S
)
_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b",
                "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip


def _ansi_c(body: str) -> str:
    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] in "xuU" and len(esc) > 1:
            return chr(int(esc[1:], 16))
        if esc[0].isdigit():
            return chr(int(esc, 8))
        return _ANSI_SIMPLE.get(esc, "\\" + esc)

    return _ANSI_C.sub(sub, body)


class _Walker:
    def __init__(self, analysis: Analysis, variables: dict[str, str]) -> None:
        self.a = analysis
        self.vars = variables

    # --- entry points ---------------------------------------------------------------------

    def script(self, text: str, depth: int, via: tuple[str, ...]) -> None:
        if depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", text[:200]))
            return
        tree = _PARSER.parse(text.encode())
        root = tree.root_node
        if root.has_error:
            bad = _first_error(root)
            part = (_text(bad) if bad is not None else "").strip() or text[:200]
            self.a.problems.append(Problem("parse-error", "the shell parser rejects it", part))
            return
        self.node(root, depth, via)

    # --- statements -----------------------------------------------------------------------

    def node(
        self, n: Node, depth: int, via: tuple[str, ...], upstream: tuple[str, ...] = ()
    ) -> None:
        kind = n.type
        if not n.is_named or kind in _IGNORED:
            return
        if kind == "list":  # left-nested: `a && b && c` is list(list(a, b), c); no recursion
            for c in _flatten(n, "list"):
                self.node(c, depth, via)
        elif kind in _TRANSPARENT:
            for c in n.named_children:
                self.node(c, depth, via)
        elif kind == "pipeline":
            names: list[str] = list(upstream)
            stages = _flatten_pipeline(n)
            for i, c in enumerate(stages):
                self.node(c, depth, via, tuple(names))
                names.extend(_stage_names(c))
                if i > 0:
                    self._pipe_into_shell(stages[i - 1], c, depth, via)
        elif kind == "command":
            self.command(n, depth, via, upstream)
        elif kind == "redirected_statement":
            self.redirected(n, depth, via, upstream)
        elif kind == "variable_assignment":
            self.assignment(n, depth, via)
        elif kind in ("declaration_command", "unset_command"):
            for c in n.named_children:
                if c.type == "variable_assignment":
                    self.assignment(c, depth, via)
                else:
                    self.word(c, depth, via)
        elif kind == "function_definition":
            self.function(n, depth, via)
        elif kind in ("for_statement", "c_style_for_statement", "case_statement", "test_command"):
            for c in n.named_children:
                if c.type in _EXPRESSIONS or c.type in ("variable_name",):
                    self.word(c, depth, via)
                else:
                    self.node(c, depth, via)
            if kind == "test_command":
                self._test_indirection(n)
        elif kind in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
            for c in n.named_children:
                self.word(c, depth, via)
        elif kind in _EXPRESSIONS or kind in ("command_substitution", "process_substitution"):
            self.word(n, depth, via)
        else:
            self.a.problems.append(
                Problem("unknown-node", f"shell construct {kind!r} is not analysed", _text(n))
            )

    def function(self, n: Node, depth: int, via: tuple[str, ...]) -> None:
        name_node = n.child_by_field_name("name")
        name = _text(name_node) if name_node is not None else ""
        before = len(self.a.commands)
        for c in n.named_children:
            if c != name_node:
                self.node(c, depth, via)
        called = {c.name for c in self.a.commands[before:]}
        body = n.child_by_field_name("body")
        spreads = body is not None and _has_pipe_or_background(body)
        self.a.functions[name] = (called, spreads)

    def assignment(self, n: Node, depth: int, via: tuple[str, ...]) -> None:
        name_node = n.child_by_field_name("name")
        value_node = n.child_by_field_name("value")
        value = self.word(value_node, depth, via) if value_node is not None else Word("")
        if name_node is not None and name_node.type == "variable_name":
            name = _text(name_node)
            if name == "IFS":
                self.a.problems.append(
                    Problem("dynamic", "IFS changes how the shell splits words", _text(n))
                )
            if value.dynamic:
                self.vars.pop(name, None)
            else:
                self.vars[name] = value.text

    def redirected(
        self, n: Node, depth: int, via: tuple[str, ...], upstream: tuple[str, ...]
    ) -> None:
        body = n.child_by_field_name("body")
        redirects = [c for c in n.named_children if c != body]
        extra: list[Node] = []
        writes: list[Word] = []
        stdin_script: str | None = None
        later: list[Node] = []  # heredocs: the rest of their line is parsed inside them
        for r in redirects:
            if r.type == "file_redirect":
                dests = r.children_by_field_name("destination")
                # tree-sitter-bash misparse: `rm 2>/dev/null -rf /` puts `-rf /` in the redirect.
                # Bash treats those words as arguments of the command: so do we.
                extra.extend(dests[1:])
                op = next((c.type for c in r.children if not c.is_named), "")
                if dests and op in _OUTPUT_REDIRECTS:
                    writes.append(self.word(dests[0], depth, via))
                for d in dests[:1]:
                    self.word(d, depth, via)
            elif r.type == "heredoc_redirect":
                body_node = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                stdin_script = _text(body_node) if body_node is not None else ""
                later.append(r)
            elif r.type == "herestring_redirect":
                words = [self.word(c, depth, via) for c in r.named_children]
                stdin_script = " ".join(w.text for w in words)
            else:
                self.node(r, depth, via)
        if body is None:  # `>/dev/sda` alone: a write without a command
            self.emit(Word(":"), (), _text(n), depth, via, upstream, tuple(writes))
            return
        if body.type == "command":
            self.command(body, depth, via, upstream, extra, writes, stdin_script, _text(n))
        else:
            if extra:
                self.a.problems.append(
                    Problem("misparse", "words after a redirection of a compound command", _text(n))
                )
            self.node(body, depth, via, upstream)
        for r in later:
            self._heredoc_rest(n, r, depth, via, upstream + tuple(_stage_names(body)))

    def _heredoc_rest(
        self, stmt: Node, r: Node, depth: int, via: tuple[str, ...], upstream: tuple[str, ...]
    ) -> None:
        """tree-sitter-bash puts what follows ``<<EOF`` on its line inside the heredoc node:
        ``| sh``, ``&& cmd``, more redirections. Walk it; stray words there are a misparse."""
        for c in r.named_children:
            if c.type == "heredoc_start":
                if not re.fullmatch(r"[\w.\-'\"\\]+", _text(c)):
                    self.a.problems.append(
                        Problem("misparse", "a heredoc delimiter with shell syntax in it", _text(r))
                    )
            elif c.type == "heredoc_body":
                for sub in c.named_children:
                    self.word(sub, depth, via)
            elif c.type in ("heredoc_end", "file_descriptor"):
                continue
            elif c.type == "pipeline" or (c.type in ("command", "redirected_statement")
                                          and _after_pipe(r, c)):  # fmt: skip
                stages = _flatten_pipeline(c)
                left = stmt
                names = list(upstream)
                for st in stages:
                    self.node(st, depth, via, tuple(names))
                    names.extend(_stage_names(st))
                    self._pipe_into_shell(left, st, depth, via)
                    left = st
            elif c.type in ("word", "concatenation", "string", "raw_string", "number"):
                self.a.problems.append(
                    Problem("misparse", "words after a heredoc marker", _text(r))
                )
            elif c.type == "file_redirect":
                self.node(c, depth, via)
            else:
                self.node(c, depth, via)

    # --- simple commands ------------------------------------------------------------------

    def command(
        self,
        n: Node,
        depth: int,
        via: tuple[str, ...],
        upstream: tuple[str, ...],
        extra: list[Node] | None = None,
        writes: list[Word] | None = None,
        stdin_script: str | None = None,
        source: str | None = None,
    ) -> None:
        name_node = n.child_by_field_name("name")
        args_nodes = n.children_by_field_name("argument") + (extra or [])
        self._check_newlines(n)
        for c in n.named_children:
            if c.type == "variable_assignment":
                self.word(c.child_by_field_name("value") or c, depth, via)
            elif c.type == "file_redirect":  # `cmd >out arg` inside the command node
                dests = c.children_by_field_name("destination")
                args_nodes = args_nodes + dests[1:]
                op = next((x.type for x in c.children if not x.is_named), "")
                if dests and op in _OUTPUT_REDIRECTS:
                    writes = [*(writes or []), self.word(dests[0], depth, via)]
            elif c.type == "herestring_redirect":
                stdin_script = " ".join(self.word(x, depth, via).text for x in c.named_children)
        if name_node is None:
            return  # only assignments: `FOO=1`
        first = name_node.named_children[0] if name_node.named_children else name_node
        words = [*self._split_words(first, depth, via)]
        for a in args_nodes:
            words.extend(self._split_words(a, depth, via))
        name_word, args = words[0], tuple(words[1:])
        self.emit(
            name_word,
            args,
            source or _text(n),
            depth,
            via,
            upstream,
            tuple(writes or ()),
            stdin_script,
        )

    def emit(
        self,
        name: Word,
        args: tuple[Word, ...],
        source: str,
        depth: int,
        via: tuple[str, ...],
        upstream: tuple[str, ...] = (),
        writes: tuple[Word, ...] = (),
        stdin_script: str | None = None,
    ) -> None:
        """Record one simple command, then look inside it (wrappers, payloads)."""
        if name.dynamic and "/" not in name.text.rsplit("$", 1)[-1]:
            self.a.problems.append(
                Problem("dynamic", "the command name is only known at run time", name.text)
            )
            return
        if depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", source[:200]))
            return
        cmd_name = normalize_name(name.text)
        cmd = SimpleCommand(
            name=cmd_name,
            args=args,
            source=source,
            raw_name=name.text,
            upstream=upstream,
            stdin_script=stdin_script is not None,
            writes=writes,
            via=via,
        )
        self.a.commands.append(cmd)
        if stdin_script is not None and cmd_name in SHELLS and _reads_program_from_stdin(cmd):
            self.script(stdin_script, depth + 1, (*via, f"{cmd_name} <<"))
        _unwrap(self, cmd, depth)

    # --- words ----------------------------------------------------------------------------

    def word(self, n: Node, depth: int, via: tuple[str, ...]) -> Word:
        """The value of a word node; commands inside it are walked as well."""
        kind = n.type
        if kind in ("word", "number", "variable_name", "test_operator", "regex", "extglob_pattern"):
            return Word(_unescape_word(_text(n)) if kind == "word" else _text(n))
        if kind == "raw_string":
            return Word(_text(n)[1:-1])
        if kind == "ansi_c_string":
            return Word(_ansi_c(_text(n)[2:-1]))
        if kind == "string_content":
            return Word(re.sub(r"\\([$`\"\\\n])", r"\1", _text(n)))
        if kind in ("string", "translated_string", "concatenation", "heredoc_body"):
            parts = [self.word(c, depth, via) for c in n.named_children]
            if kind in ("string", "translated_string") and not n.named_children:
                return Word("")
            if kind == "string":
                # Text between named children (spaces inside quotes) is part of the value.
                return _join_string(n, parts)
            return _join(parts)
        if kind == "simple_expansion":
            name = _text(n)[1:]
            if name in self.vars:
                return Word(self.vars[name])
            return Word("$" + name, "", dynamic=True)
        if kind == "expansion":
            return self._expansion(n, depth, via)
        if kind in ("command_substitution", "process_substitution"):
            before = len(self.a.commands)
            for c in n.named_children:
                self.node(c, depth, via)
            names = tuple(c.name for c in self.a.commands[before:])
            return Word(_text(n), "", dynamic=True, substituted=names)
        if kind == "arithmetic_expansion":
            for c in n.named_children:
                self._walk_expression(c, depth, via)
            return Word(_text(n), None, dynamic=True)
        if kind in _EXPRESSIONS or kind in ("variable_assignment", "brace_expression", "array"):
            self._walk_expression(n, depth, via)
            return Word(_text(n), None, dynamic=True)
        self.a.problems.append(
            Problem("unknown-node", f"shell construct {kind!r} is not analysed", _text(n))
        )
        return Word(_text(n), None, dynamic=True)

    def _split_words(self, n: Node, depth: int, via: tuple[str, ...]) -> list[Word]:
        """An unquoted ``$x`` whose known value has spaces is several words to the shell
        (``x="rm -rf /"; $x``)."""
        word = self.word(n, depth, via)
        if n.type in ("simple_expansion", "expansion") and not word.dynamic:
            parts = word.text.split()
            if len(parts) > 1:
                return [Word(p) for p in parts]
        return [word]

    def _expansion(self, n: Node, depth: int, via: tuple[str, ...]) -> Word:
        text = _text(n)
        inner = text[2:-1]
        for c in n.named_children:
            if c.type not in ("variable_name", "special_variable_name"):
                self._walk_expression(c, depth, via)
        if re.search(r"@[PEAKak]?\s*$", inner) and "@P" in inner.replace(" ", ""):
            self.a.problems.append(
                Problem("dynamic", "prompt expansion ${...@P} can run commands", text)
            )
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)", inner)
        if m and m[1] in self.vars:
            return Word(self.vars[m[1]])
        never_empty = bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*:?[?+].*", inner, re.S))
        default = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*):?[-=](.*)", inner, re.S)
        if default is not None:  # ${VAR:-default}: the default when VAR is unset or empty
            if default[1] in self.vars and self.vars[default[1]]:
                return Word(self.vars[default[1]])
            return Word(text, _unescape_word(default[2].strip("'\"")), dynamic=True)
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", inner)
        shown = "$" + name[0] if name and m else text
        return Word(shown, None if never_empty else "", dynamic=True)

    def _walk_expression(self, n: Node, depth: int, via: tuple[str, ...]) -> None:
        if n.type in ("command_substitution", "process_substitution"):
            self.word(n, depth, via)
            return
        for c in n.named_children:
            self._walk_expression(c, depth, via)

    # --- guards ---------------------------------------------------------------------------

    def _check_newlines(self, n: Node) -> None:
        """tree-sitter-bash can fold a command on the next line into this one's arguments."""
        kids = n.named_children
        for a, b in itertools.pairwise(kids):
            gap = n.text[a.end_byte - n.start_byte : b.start_byte - n.start_byte] if n.text else b""
            joined = gap.replace(b"\\\n", b"")
            if b"\n" in joined or (gap and not joined):
                # a line break tree-sitter folded into the words, or `r\<newline>m`, which bash
                # reads as one word (`rm`) and tree-sitter as two
                self.a.problems.append(
                    Problem("misparse", "a line break inside one command's words", _text(n))
                )
                return

    def _test_indirection(self, n: Node) -> None:
        # `[[ -v 'a[$(cmd)]' ]]` evaluates the subscript: a literal that is code.
        text = _text(n)
        if re.search(r"-v\s", text) and ("$(" in text or "`" in text):
            self.a.problems.append(Problem("dynamic", "a test -v subscript can run commands", text))

    def _pipe_into_shell(self, left: Node, right: Node, depth: int, via: tuple[str, ...]) -> None:
        """A shell reading its program from a pipe: analyse that program when it is a literal
        (``echo 'ls' | sh``, ``cat <<EOF | sh``); otherwise it cannot be verified."""
        body = right.child_by_field_name("body") if right.type == "redirected_statement" else right
        if body is None or body.type != "command":
            return
        rn = body.child_by_field_name("name")
        if rn is None:
            return
        scratch = Analysis()
        probe = _Walker(scratch, dict(self.vars))
        name = probe.word(rn.named_children[0] if rn.named_children else rn, depth, via)
        args = tuple(probe.word(a, depth, via) for a in body.children_by_field_name("argument"))
        cmd = SimpleCommand(normalize_name(name.text), args, _text(body))
        if cmd.name not in SHELLS or not reads_program_from_stdin(cmd):
            return
        payload = self._literal_output(left, depth, via)
        if payload is None:
            self.a.problems.append(
                Problem("dynamic", "a shell reading its program from a pipe", _text(right))
            )
            return
        self.script(payload, depth + 1, (*via, f"| {cmd.name}"))

    def _literal_output(self, n: Node, depth: int, via: tuple[str, ...]) -> str | None:
        """What ``echo``/``printf`` of literals, or ``cat`` of a heredoc, writes; else None."""
        cmd_node = n.child_by_field_name("body") if n.type == "redirected_statement" else n
        if cmd_node is None or cmd_node.type != "command":
            return None
        name_node = cmd_node.child_by_field_name("name")
        if name_node is None:
            return None
        name = normalize_name(_unescape_word(_text(name_node)))
        probe = _Walker(Analysis(), dict(self.vars))
        words = [probe.word(a, depth, via) for a in cmd_node.children_by_field_name("argument")]
        if any(w.dynamic for w in words):
            return None
        if name in ("echo", "printf"):
            # printf and `echo -e` (and dash's echo) turn \n, \x72, \0155 into characters
            text = " ".join(w.text for w in words if not w.text.startswith("-"))
            return _ansi_c(text)
        if name == "cat" and not words and n.type == "redirected_statement":
            for r in n.named_children:
                if r.type == "heredoc_redirect":
                    b = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                    return _text(b)
                if r.type == "herestring_redirect":
                    return " ".join(probe.word(c, depth, via).text for c in r.named_children)
        return None


# --- wrappers and payloads ---------------------------------------------------------------------

#: wrapper -> options that take a value (the command starts at the first other non-option word)
_WRAPPERS: dict[str, frozenset[str]] = {
    "sudo": frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T", "--user",
                       "--group", "--chdir", "--host", "--prompt", "--role", "--type"}),
    "doas": frozenset({"-u", "-C"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-t", "--class", "--classdata"}),
    "nohup": frozenset(), "setsid": frozenset(), "time": frozenset({"-f", "-o", "--format",
                                                                     "--output"}),
    "stdbuf": frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}),
    "command": frozenset(), "builtin": frozenset(), "exec": frozenset({"-a"}),
    "coproc": frozenset(),
    "chroot": frozenset({"--userspec", "--groups"}), "unshare": frozenset(),
    "flock": frozenset({"-w", "--timeout", "-E", "--conflict-exit-code"}),
    "taskset": frozenset(), "chrt": frozenset(), "caffeinate": frozenset(),
    "strace": frozenset({"-e", "-o", "-p", "-s", "-u", "-E"}), "ltrace": frozenset({"-e", "-o"}),
    "torsocks": frozenset(), "proxychains": frozenset({"-f"}), "proxychains4": frozenset({"-f"}),
    "unbuffer": frozenset(), "xvfb-run": frozenset({"-a", "-n", "-s", "-e", "-f", "-p"}),
    "catchsegv": frozenset(), "valgrind": frozenset(), "gdb": frozenset(),
    "firejail": frozenset(), "runuser": frozenset({"-u", "-g", "-G", "--user", "--group"}),
    "sg": frozenset(), "systemd-run": frozenset({"-p", "-u", "--unit", "--property"}),
    "nsenter": frozenset({"-t", "--target", "-S", "--setuid", "-G", "--setgid"}),
}  # fmt: skip
#: wrappers whose first non-option argument is consumed before the command
_WRAPPER_POSITIONALS = {"timeout": 1, "chroot": 1, "taskset": 1, "chrt": 1, "flock": 1, "sg": 1}
_XARGS_VALUE_OPTS = frozenset(
    {"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter", "--eof",
     "--max-lines", "--max-args", "--max-procs", "--max-chars", "--process-slot-var"}
)  # fmt: skip
_SSH_VALUE_OPTS = frozenset(
    {"-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O", "-o", "-p",
     "-Q", "-R", "-S", "-W", "-w"}
)  # fmt: skip
_TIMEOUT_VALUE_OPTS = frozenset({"-s", "-k", "--signal", "--kill-after"})
_PARALLEL_VALUE_OPTS = frozenset({"-j", "--jobs", "-S", "--sshlogin", "--joblog", "-d", "-a"})


def _strip_options(args: tuple[Word, ...], value_opts: frozenset[str]) -> int:
    """Index of the first argument after a wrapper's options (``--`` ends them)."""
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--":
            return i + 1
        if not t.startswith("-") or t == "-":
            return i
        if t in value_opts:
            i += 2
            continue
        i += 1
    return i


def _unwrap(w: _Walker, cmd: SimpleCommand, depth: int) -> None:
    """Find the commands a command runs: wrappers' inner commands and literal payloads."""
    name, args = cmd.name, cmd.args
    via = (*cmd.via, name)
    inner: tuple[Word, ...] | None = None
    if name in ("su", "runuser", "sg", "script", "flock"):
        for k, a in enumerate(args):  # `su -c CMD`, `su -lc CMD`, `script -qc CMD`, `--command=`
            if a.text.startswith("--command="):
                _payload(w, Word(a.text.split("=", 1)[1], dynamic=a.dynamic), depth, via)
                return
            if a.text == "--command" or re.fullmatch(r"-[a-zA-Z]*c", a.text):
                if k + 1 < len(args):
                    _payload(w, args[k + 1], depth, via)
                return
    if name == "timeout":
        i = _strip_options(args, _TIMEOUT_VALUE_OPTS)
        inner = args[i + 1 :]
    elif name == "env":
        inner = _env_inner(w, args, depth, via)
    elif name == "nice" and args and re.fullmatch(r"-\d+", args[0].text):
        inner = args[1:]
    elif name in _WRAPPERS or name in _WRAPPER_POSITIONALS:
        i = _strip_options(args, _WRAPPERS.get(name, frozenset()))
        if name in ("sudo", "doas") and any(a.text in ("-s", "-i") for a in args[:i]):
            # a shell: with a command it runs it through the shell, without one it reads stdin
            shell = " ".join(a.text for a in args[i:]) if i < len(args) else ""
            w.emit(Word("sh"), (Word("-c"), Word(shell)) if shell else (), cmd.source, depth + 1,
                   via, cmd.upstream)  # fmt: skip
            return
        inner = args[i + _WRAPPER_POSITIONALS.get(name, 0) :]
    elif name == "busybox" and args and args[0].text not in ("sh", "ash", "bash"):
        inner = args
    elif name in ("xargs", "parallel"):
        inner = _xargs_inner(cmd)
    elif name == "find":
        _find_exec(w, cmd, depth)
        return
    elif name == "watch":
        i = _strip_options(args, frozenset({"-n", "-d", "--interval", "-q", "--equexit"}))
        if i < len(args):
            w.script(" ".join(a.text for a in args[i:]), depth + 1, via)
        return
    elif name == "ssh":
        rest = args[_strip_options(args, _SSH_VALUE_OPTS) + 1 :]  # after the host
        if rest:
            w.script(" ".join(a.text for a in rest), depth + 1, (*via, "ssh remote"))
        return
    elif name == "alias":
        for a in args:  # `alias ll='rm -rf /'`: the value runs wherever the name is used
            if "=" in a.text:
                _payload(w, Word(a.text.split("=", 1)[1], dynamic=a.dynamic), depth, via)
        return
    elif name == "trap" and args and not args[0].text.startswith("-"):
        _payload(w, args[0], depth, via)  # the handler runs later, as shell code
        return
    elif name == "eval":
        if any(a.dynamic for a in args):
            w.a.problems.append(
                Problem("dynamic", "eval of a value known only at run time", cmd.source)
            )
        w.script(" ".join(a.text for a in args), depth + 1, via)
        return
    elif name in SHELLS:
        _shell_payload(w, cmd, depth)
        return
    elif name == "tar":
        for a in args:
            for key in _TAR_EXEC:
                if a.text.startswith(key):
                    w.script(a.text[len(key) :], depth + 1, (*via, key.strip("-=")))
        return
    else:
        _inline_code_strings(w, cmd, depth)
        return
    if inner:
        w.emit(inner[0], tuple(inner[1:]), cmd.source, depth + 1, via, cmd.upstream, cmd.writes)


_TAR_EXEC = ("--checkpoint-action=exec=", "--to-command=", "--use-compress-program=",
             "--info-script=", "--new-volume-script=")  # fmt: skip
_STRING_LITERAL = re.compile(r"\"((?:[^\"\\]|\\.){2,2000})\"|'((?:[^'\\]|\\.){2,2000})'")


def _env_inner(
    w: _Walker, args: tuple[Word, ...], depth: int, via: tuple[str, ...]
) -> tuple[Word, ...]:
    i = 0
    while i < len(args):
        t = args[i].text
        if t in ("-S", "--split-string") and i + 1 < len(args):
            w.script(args[i + 1].text, depth + 1, via)
            return ()
        if t.startswith("--split-string=") or (t.startswith("-S") and len(t) > 2):
            w.script(t.split("=", 1)[-1] if "=" in t else t[2:], depth + 1, via)
            return ()
        if t == "--":
            return args[i + 1 :]
        if t in _WRAPPERS["env"]:
            i += 2
        elif t.startswith("-") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", t):
            i += 1
        else:
            break
    return args[i:]


def _xargs_inner(cmd: SimpleCommand) -> tuple[Word, ...]:
    """``xargs CMD ARGS`` / ``parallel CMD ::: VALUES``: CMD with ARGS and the values it is fed."""
    args = cmd.args
    i = _strip_options(args, _XARGS_VALUE_OPTS if cmd.name == "xargs" else _PARALLEL_VALUE_OPTS)
    rest = list(args[i:])
    if not rest:
        return ()  # xargs alone runs echo
    fed: list[Word] = []
    if cmd.name == "parallel" and any(a.text in (":::", "::::") for a in rest):
        k = next(k for k, a in enumerate(rest) if a.text in (":::", "::::"))
        fed = [a for a in rest[k + 1 :] if a.text not in (":::", "::::")]
        rest = rest[:k]
    if not fed:
        fed = [Word("<xargs input>", "", dynamic=True, substituted=cmd.upstream or ("stdin",))]
    return (*rest, *fed)


def _inline_code_strings(w: _Walker, cmd: SimpleCommand, depth: int) -> None:
    """``python -c 'os.system("rm -rf /")'``, ``awk 'BEGIN{system("...")}'``: string literals in
    inline code that parse as shell commands are checked too. A heuristic (code is not shell):
    literals that do not parse are ignored, and the code itself stays unverifiable."""
    if inline_code(cmd) is None and cmd.name not in ("awk", "gawk", "mawk", "nawk"):
        return
    for a in cmd.args:
        for m in _STRING_LITERAL.finditer(a.text):
            literal = m.group(1) or m.group(2) or ""
            scratch = Analysis()
            _Walker(scratch, {}).script(literal, depth + 1, (*cmd.via, f"{cmd.name} code"))
            w.a.commands.extend(scratch.commands)


def _payload(w: _Walker, arg: Word, depth: int, via: tuple[str, ...]) -> None:
    if arg.dynamic and arg.substituted:
        w.a.problems.append(Problem("dynamic", "a shell payload known only at run time", arg.text))
    w.script(arg.text, depth + 1, via)


_SHELL_VALUE_OPTS = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


def _shell_args(cmd: SimpleCommand) -> tuple[tuple[Word, ...], int | None, int]:
    """A shell's arguments (after ``busybox sh``), the index of its ``-c`` payload if any, and
    the index of its first operand (a script file, or the payload's ``$0`` ...)."""
    args = cmd.args[1:] if cmd.name == "busybox" else cmd.args
    payload: int | None = None
    i = 0
    while i < len(args):
        t = args[i].text
        if t == "--" or t == "-":
            i += 1
            break
        if t in _SHELL_VALUE_OPTS:
            i += 2
            continue
        if t.startswith("--") or (t[:1] in "-+" and len(t) > 1):
            if t[:1] == "-" and not t.startswith("--") and "c" in t[1:] and payload is None:
                payload = -1  # the next operand is the payload
            i += 1
            continue
        break
    if payload == -1:
        return args, (i if i < len(args) else None), i
    return args, None, i


def _shell_payload(w: _Walker, cmd: SimpleCommand, depth: int) -> None:
    """``bash -c 'PAYLOAD'`` (also ``-lc``, ``-o pipefail -c``, ``busybox sh -c``)."""
    args, payload, _first = _shell_args(cmd)
    if payload is not None:
        _payload(w, args[payload], depth, (*cmd.via, f"{cmd.name} -c"))


def _find_exec(w: _Walker, cmd: SimpleCommand, depth: int) -> None:
    args = cmd.args
    starts = [
        a.text
        for a in args[
            : next((k for k, a in enumerate(args) if a.text.startswith(("-", "(", "!"))), len(args))
        ]
    ]
    # Found paths are below the start paths: a relative start cannot reach /.
    start = (
        starts[0]
        if len(starts) == 1
        else ("/" if any(s.startswith(("/", "~", "$")) for s in starts) else ".")
    )
    i = 0
    while i < len(args):
        if args[i].text in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and args[j].text not in (";", "+"):
                j += 1
            found = Word(f"{start.rstrip('/')}/<found>", None, dynamic=True, substituted=("find",))
            inner = tuple(found if "{}" in a.text else a for a in args[i + 1 : j])
            if inner:
                w.emit(inner[0], inner[1:], cmd.source, depth + 1, (*cmd.via, "find -exec"))
            i = j
        i += 1


def _reads_program_from_stdin(cmd: SimpleCommand) -> bool:
    """A shell or interpreter with no script (or ``-c``) argument reads its program from stdin."""
    if cmd.name in SHELLS:
        args, payload, first = _shell_args(cmd)
        if payload is not None:
            return False
        return first >= len(args) or any(a.text == "-s" for a in args[:first])
    if _interpreter(cmd.name) is None or inline_code(cmd) is not None:
        return False
    positional = [a for a in cmd.args if not a.text.startswith("-")]
    return not positional or any(a.text == "-" for a in cmd.args)


def _interpreter(name: str) -> str | None:
    base = re.sub(r"[\d.]+$", "", name)
    return base if base in INTERPRETERS else None


def inline_code(cmd: SimpleCommand) -> str | None:
    """The inline-code flag of ``python -c``, ``perl -e``, ``node -e``... if the command has one
    (also in a cluster of short flags: ``python3 -Ic``, ``perl -ne``)."""
    base = _interpreter(cmd.name)
    if base is None:
        return None
    flags = INLINE_CODE_FLAGS.get("python" if base.startswith("python") else base, ())
    for a in cmd.args:
        t = a.text
        if t in flags:
            return t
        if re.fullmatch(r"-[A-Za-z]+", t) and any(len(f) == 2 and f[1] in t[1:] for f in flags):
            return t
        if not t.startswith("-"):
            return None  # a script file: what follows are its arguments
    return None


def reads_program_from_stdin(cmd: SimpleCommand) -> bool:
    return _reads_program_from_stdin(cmd)


# --- helpers -------------------------------------------------------------------------------------


def _text(n: Node | None) -> str:
    if n is None or n.text is None:
        return ""
    return n.text.decode("utf-8", "replace")


def _first_error(n: Node) -> Node | None:
    if n.type == "ERROR" or n.is_missing:
        return n
    for c in n.children:
        if c.has_error or c.is_missing:
            found = _first_error(c)
            if found is not None:
                return found
    return None


def _join(parts: list[Word]) -> Word:
    text = "".join(p.text for p in parts)
    dynamic = any(p.dynamic for p in parts)
    empties = [p.if_empty if p.if_empty is not None else p.text for p in parts]
    if_empty = "".join(empties) if any(p.if_empty is not None for p in parts) else None
    subs = tuple(s for p in parts for s in p.substituted)
    return Word(text, if_empty if if_empty != text else None, dynamic, subs)


def _join_string(n: Node, parts: list[Word]) -> Word:
    # Rebuild the quoted value from the source so spaces between parts are kept.
    pieces: list[Word] = []
    pos = n.start_byte + 1
    src = n.text or b""
    kids = n.named_children
    for c, w in zip(kids, parts, strict=True):
        gap = src[pos - n.start_byte : c.start_byte - n.start_byte].decode("utf-8", "replace")
        if gap:
            pieces.append(Word(gap))
        pieces.append(w)
        pos = c.end_byte
    tail = src[pos - n.start_byte : len(src) - 1].decode("utf-8", "replace")
    if tail:
        pieces.append(Word(tail))
    return _join(pieces)


def _after_pipe(parent: Node, child: Node) -> bool:
    prev = child.prev_sibling
    return prev is not None and prev.type in ("|", "|&")


def _flatten_pipeline(n: Node) -> list[Node]:
    return _flatten(n, "pipeline")


def _flatten(n: Node, kind: str) -> list[Node]:
    """The operands of nested ``kind`` nodes, in order, without recursion."""
    out: list[Node] = []
    todo = [n]
    while todo:
        cur = todo.pop()
        if cur.type == kind:
            todo.extend(reversed(cur.named_children))
        else:
            out.append(cur)
    return out


def _stage_names(n: Node) -> list[str]:
    if n.type == "redirected_statement":
        body = n.child_by_field_name("body")
        return _stage_names(body) if body is not None else []
    if n.type == "command":
        name = n.child_by_field_name("name")
        return [normalize_name(_unescape_word(_text(name)))] if name is not None else []
    return [n.type]


def _has_pipe_or_background(n: Node) -> bool:
    if n.type == "pipeline" or (not n.is_named and n.type == "&"):
        return True
    return any(_has_pipe_or_background(c) for c in n.children)


def analyse(command: str) -> Analysis:
    """Every simple command in ``command`` and every problem found analysing it."""
    analysis = Analysis()
    if len(command) > MAX_COMMAND_CHARS:
        analysis.problems.append(
            Problem("too-long", f"longer than {MAX_COMMAND_CHARS} characters", command[:80])
        )
        return analysis
    try:
        _Walker(analysis, {}).script(command, 0, ())
    except RecursionError:  # pathological nesting: refuse rather than guess
        analysis.problems.append(Problem("too-deep", "nested too deeply to analyse", command[:80]))
    return analysis
