"""The walker: a tree-sitter-bash syntax tree -> every simple command, with words expanded as
far as the line says (see ``shellparse`` for what is found and the bounds). The commands
inside wrappers and payloads are found by ``shellwrap``."""

from __future__ import annotations

import bisect
import fnmatch
import posixpath
import re
import time

from tree_sitter import Node, QueryCursor

from .shelltext import (
    _loop_values,
    _product,
    _spaced,
    _unescape_word,
    _union,
    ansi_c,
    brace_expand,
    normalize_name,
    printf_output,
)
from .shelltree import _ASSIGNMENTS, _parser, _set_timeout, _yield_gil
from .shellwords import (
    _FD_PATHS,
    _SELF_EXE,
    _SHELL_SET,
    _STDIN_PATHS,
    MAX_COMMAND_CHARS,
    MAX_COMMANDS,
    MAX_CPU_S,
    MAX_DEPTH,
    MAX_NESTING,
    MAX_NODES,
    MAX_PARSE_MICROS,
    MAX_VALUE_CHARS,
    MAX_WORDS,
    NO_UPSTREAM,
    Analysis,
    Problem,
    Scope,
    SimpleCommand,
    Upstream,
    Word,
    _Ctx,
    _Limit,
    _norm,
    _unknown,
)
from .shellwrap import _unwrap

_TRANSPARENT = frozenset(
    {"program", "compound_statement", "do_group", "else_clause", "elif_clause", "case_item",
     "variable_assignments", "negated_command"}
)  # fmt: skip
_IGNORED = frozenset({"comment", "heredoc_body", "heredoc_start", "heredoc_end", "file_descriptor",
                      "variable_name", "special_variable_name", "test_operator", "regex",
                      "extglob_pattern", "heredoc_content"})  # fmt: skip
_EXPRESSIONS = frozenset(
    {"binary_expression", "unary_expression", "parenthesized_expression", "ternary_expression",
     "postfix_expression", "number", "word", "string", "raw_string", "concatenation",
     "simple_expansion", "expansion", "arithmetic_expansion", "string_content", "ansi_c_string",
     "translated_string", "subscript", "array", "brace_expression", "test_command"}
)  # fmt: skip
_OUTPUT_REDIRECTS = (">", ">>", ">|", "&>", "&>>", ">&", "<>", "&>|")
_INPUT_REDIRECTS = ("<", "<&", "<>")
_STOPPERS = frozenset({"break", "exit", "return", "wait"})


class _Walker:
    """One walk of a bash syntax tree, node kind by node kind.

    Over the house's ~400-line bound on purpose: it is one recursive descent over tree-sitter's
    node kinds whose methods share the walk's state (scope, function bodies being inlined,
    payloads being analysed, nesting), and splitting it by node kind would pass that state
    through every call or hide it in a second object that is the same class in two files. The
    wrapper tables and their handlers, word functions and limits already live in their own
    modules (``shellwrap``, ``shelltext``, ``shellwords``)."""

    def __init__(self, analysis: Analysis, scope: Scope) -> None:
        self.a = analysis
        self.s = scope
        self.nesting = 0
        self.payloads: list[str] = []  # payload texts being analysed (to see one run itself)
        self.defined: dict[str, tuple[Node, bytes]] = {}  # function bodies, to walk at calls
        self.deferred: dict[str, list[Problem]] = {}  # found in a body, reported at a call
        self.inlining: list[str] = []  # functions being walked for a call
        self.backgrounds = 0  # statements run with `&` so far
        self.stoppers = 0  # break/exit/return/wait so far
        self.src = b""  # source of the script being walked
        self.assigned: list[tuple[int, int, str]] = []  # (start, end, name) of its assignments

    # --- entry points ---------------------------------------------------------------------

    def script(self, text: str, ctx: _Ctx) -> None:
        if ctx.depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", text[:200]))
            return
        data = text.encode("utf-8", "surrogateescape")
        _yield_gil(len(data))
        parser = _parser()
        _set_timeout(parser, MAX_PARSE_MICROS - self.a.parse_micros)
        began = time.perf_counter()
        try:
            tree = parser.parse(data)
        except ValueError:  # tree-sitter's timeout
            parser.reset()
            self._limit("too-complex", "the shell parser needed more than "
                        f"{MAX_PARSE_MICROS // 1000} ms", text)  # fmt: skip
        finally:
            self.a.parse_micros += int((time.perf_counter() - began) * 1e6)
        root = tree.root_node
        self.a.nodes += root.descendant_count
        if self.a.nodes > MAX_NODES:
            self._limit("too-complex", f"more than {MAX_NODES} syntax elements", text)
        if root.has_error:
            bad = _first_error(root)
            part = (_text(bad, data) if bad is not None else "").strip() or text[:200]
            self.a.problems.append(Problem("parse-error", "the shell parser rejects it", part))
            return
        saved = self.src, self.assigned
        self.src = data
        self.assigned = sorted(
            (n.start_byte, n.end_byte, _text(n, data))
            for n in QueryCursor(_ASSIGNMENTS).captures(root).get("n", [])
        )
        try:
            self.node(root, ctx)
        finally:
            self.src, self.assigned = saved

    def _limit(self, kind: str, detail: str, part: str) -> None:
        self.a.problems.append(Problem(kind, detail, part[:200]))
        raise _Limit

    def _t(self, n: Node | None, cap: int = 2000) -> str:
        if n is None:
            return ""
        end = min(n.end_byte, n.start_byte + cap)
        return self.src[n.start_byte : end].decode("utf-8", "replace")

    # --- statements -----------------------------------------------------------------------

    def node(self, n: Node, ctx: _Ctx) -> None:
        kind = n.type
        if not n.is_named or kind in _IGNORED:
            return
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            if self.a.over_time():
                self._limit("too-complex", f"more than {MAX_CPU_S} s of work to check", self._t(n))
            self._node(n, kind, ctx)
        finally:
            self.nesting -= 1

    def _node(self, n: Node, kind: str, ctx: _Ctx) -> None:
        if kind in _TRANSPARENT:
            self.statements(n, ctx)
        elif kind == "list":  # left-nested: `a && b && c` is list(list(a, b), c)
            for i, c in enumerate(_flatten(n, "list")):
                self.statement(c, ctx if i == 0 else ctx._replace(certain=False))
        elif kind == "subshell":
            self.child(lambda: self.statements(n, ctx._replace(forked=True)))
        elif kind == "pipeline":
            self.pipeline(n, ctx)
        elif kind == "command":
            self.command(n, ctx)
        elif kind == "redirected_statement":
            self.redirected(n, ctx)
        elif kind == "variable_assignment":
            self.assignment(n, ctx, ctx.certain)
        elif kind in ("declaration_command", "unset_command"):
            self.declaration(n, ctx)
        elif kind == "function_definition":
            self.function(n, ctx)
        elif kind in ("if_statement", "case_statement"):
            for c in n.named_children:
                if c.type in _EXPRESSIONS and kind == "case_statement":
                    self.word(c, ctx)
                else:
                    self.statement(c, ctx._replace(certain=False))
        elif kind in ("while_statement", "for_statement", "c_style_for_statement"):
            self.loop(n, kind, ctx)
        elif kind == "test_command":
            for c in n.named_children:
                self.word(c, ctx)
            self._test_indirection(n)
        elif kind in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
            for c in n.named_children:
                self.word(c, ctx)
        elif kind in _EXPRESSIONS or kind in ("command_substitution", "process_substitution"):
            self.word(n, ctx)
        else:
            self.a.problems.append(
                Problem("unknown-node", f"shell construct {kind!r} is not analysed", self._t(n))
            )

    def statements(self, n: Node, ctx: _Ctx) -> None:
        """Children of a list of statements; one followed by ``&`` runs in the background."""
        for c in n.named_children:
            nxt = c.next_sibling
            if nxt is not None and nxt.type == "&":
                self.backgrounds += 1
                self.child(lambda c=c: self.statement(c, ctx._replace(forked=True, stdin="null")))
            else:
                self.statement(c, ctx)

    def statement(self, n: Node, ctx: _Ctx) -> None:
        self.node(n, ctx)

    def child(self, walk: object) -> None:
        """Walk something that runs in a child process: what it assigns, defines or ``cd``s
        to does not reach the rest of the line."""
        saved = self.s
        self.s = saved.copy()
        try:
            walk()  # type: ignore[operator]
        finally:
            self.s = saved

    def pipeline(self, n: Node, ctx: _Ctx, last: _Ctx | None = None) -> None:
        """Stages of a pipeline. ``last``: redirections tree-sitter hoisted from the last stage
        to the whole pipeline (bash gives ``a | b > f`` to ``b``)."""
        stages = _flatten(n, "pipeline")
        names: list[str] = []
        parent = ctx.upstream if ctx.upstream else None
        for i, c in enumerate(stages):
            final = i == len(stages) - 1
            stage_ctx = ctx._replace(
                upstream=Upstream(parent, names, len(names)) if (names or parent) else NO_UPSTREAM,
                forked=True,
                certain=False,
                stdin="pipe" if i > 0 else ctx.stdin,
                writes=ctx.writes if final else (),
                stdin_file=ctx.stdin_file if i == 0 else None,
                fed=ctx.fed if i == 0 else None,
            )
            if final and last is not None:
                stage_ctx = stage_ctx._replace(
                    writes=stage_ctx.writes + last.writes,
                    stdin=last.stdin if last.stdin != ctx.stdin else stage_ctx.stdin,
                    stdin_file=last.stdin_file or stage_ctx.stdin_file,
                    fed=last.fed or stage_ctx.fed,
                )
            script = self._literal_output(stages[i - 1], ctx) if i > 0 else None
            self.child(lambda c=c, sc=stage_ctx, s=script: self.stage(c, sc, s))
            names.extend(_stage_names(c, self.src))

    def stage(self, n: Node, ctx: _Ctx, script: list[str] | None) -> None:
        """One pipeline stage, told what a literal ``echo``/``printf`` before it writes."""
        if n.type == "command":
            self.command(n, ctx, fed=script)
        elif n.type == "redirected_statement":
            self.redirected(n, ctx, fed=script)
        else:
            self.node(n, ctx)

    def loop(self, n: Node, kind: str, ctx: _Ctx) -> None:
        body = n.child_by_field_name("body")
        inner = ctx._replace(certain=False)
        if kind == "for_statement":
            var = n.child_by_field_name("variable")
            values = [self.word(v, ctx) for v in n.children_by_field_name("value")]
            name = self._t(var)
            if not values and self.s.positional is not None:  # `for x; do`: "$@"
                self.s.vars[name] = _loop_values(name, [Word(p) for p in self.s.positional])
            elif not values:
                self.s.vars[name] = _unknown(name)
            else:
                self.s.vars[name] = _loop_values(name, values)
        else:
            for c in n.named_children:
                if c != body:
                    self.statement(c, inner) if c.type not in _EXPRESSIONS else self.word(c, inner)
        # A variable assigned in the body keeps its value into the next round: inside the
        # body it may hold what the previous round assigned. Unknown there (cheap and safe).
        if body is not None:
            lo = bisect.bisect_left(self.assigned, (body.start_byte, 0, ""))
            for start, _end, name in self.assigned[lo:]:
                if start >= body.end_byte:
                    break
                self.s.vars[name] = _union(self._lookup_word(name), _unknown(name))
        before_bg, before_stop = self.backgrounds, self.stoppers
        if body is not None:
            self.node(body, inner)
        if (
            self.backgrounds > before_bg
            and self.stoppers == before_stop
            and (
                _endless(n, kind, self.src) or ("yes" in ctx.upstream and _reads_input(n, self.src))
            )
        ):
            self.a.bombs.append(f"{self._t(n, 120)} (an endless loop that starts processes in "
                                "the background)")  # fmt: skip

    def function(self, n: Node, ctx: _Ctx) -> None:
        name_node = n.child_by_field_name("name")
        name = _unescape_word(self._t(name_node)) if name_node is not None else ""
        self.a.functions.setdefault(name, set())
        body = n.child_by_field_name("body")
        if body is not None:
            self.defined[name] = (body, self.src)
            self.s.functions[name] = self._t(body, MAX_COMMAND_CHARS)
        saved_positional = self.s.positional
        self.s.positional = None  # its arguments are the caller's
        # What cannot be verified in the body only matters when the function runs: a call
        # walks the body again with the call's arguments and reports it then (see _call).
        problems = len(self.a.problems)
        try:
            for c in n.named_children:
                if c != name_node:
                    self.statement(c, ctx._replace(certain=False, function=name))
        finally:
            self.s.positional = saved_positional
            found = self.a.problems[problems:]
            self.deferred[name] = [p for p in found if not p.is_limit]
            self.a.problems[problems:] = [p for p in found if p.is_limit]

    def assignment(self, n: Node, ctx: _Ctx, strong: bool) -> None:
        name_node = n.child_by_field_name("name")
        value_node = n.child_by_field_name("value")
        value = self.word(value_node, ctx) if value_node is not None else Word("")
        if name_node is None or name_node.type != "variable_name":
            if name_node is not None:
                self.word(name_node, ctx)  # `a[$(cmd)]=1`: the subscript runs
            return
        name = self._t(name_node)
        op = next((c.type for c in n.children if not c.is_named), "=")
        if value_node is not None and value_node.type == "array":
            elements: list[Word] = []
            for c in value_node.named_children:
                elements.extend(self._split_words(c, ctx))
            old = self.s.arrays.get(name, ()) if op == "+=" else ()
            known = old is not None and strong and all(not e.dynamic for e in elements)
            self.s.arrays[name] = (*old, *elements) if known and old is not None else None
            first = (old or elements or [Word("")])[0] if known else _unknown(name)
            self.set_var(name, first, strong)
            return
        if op == "+=":
            value = _product([self._lookup_word(name), value])
        self.set_var(name, value, strong)
        self._special_assignment(name, value, ctx, self._t(n))

    def set_var(self, name: str, value: Word, strong: bool) -> None:
        if len(value.text) > MAX_VALUE_CHARS:
            value = _unknown(name, value.substituted)
        if name == "IFS" and value.known != " \t\n":
            self.a.problems.append(
                Problem("dynamic", "IFS changes how the shell splits words", f"IFS={value.text}")
            )
        self.s.vars[name] = value if strong else _union(value, self._lookup_word(name))

    def _special_assignment(self, name: str, value: Word, ctx: _Ctx, source: str) -> None:
        """Variables whose value is code the shell runs later."""
        if name == "PROMPT_COMMAND" or name.startswith("BASH_FUNC_"):
            self.payload(value, ctx._replace(via=(*ctx.via, name)), source)
        elif re.fullmatch(r"PS[0-4]", name):
            # prompt expansion runs the $(...) in it
            self.payload(Word(f'echo "{value.text}"', dynamic=value.dynamic),
                         ctx._replace(via=(*ctx.via, name)), source)  # fmt: skip
        elif name in ("BASH_ENV", "ENV") and (
            value.procsub or any(_STDIN_PATHS.match(v) or _FD_PATHS.match(v) for v in value.values)
        ):
            self.a.problems.append(
                Problem("dynamic", f"{name} makes the shell run a program from a pipe", source)
            )

    def declaration(self, n: Node, ctx: _Ctx) -> None:
        words: list[Word] = []
        is_unset = n.type == "unset_command"
        for c in n.named_children:
            if c.type == "variable_assignment":
                self.assignment(c, ctx, ctx.certain)
            else:
                words.append(self.word(c, ctx))
        flags = "".join(w.text[1:] for w in words if w.text.startswith("-"))
        names = [w.text for w in words if not w.text.startswith("-")]
        if is_unset:
            for name in names:
                if "f" not in flags:
                    self.s.vars[name] = Word("")
            return
        if "n" in flags:  # a name reference: assignments through it reach any variable
            self._forget_variables()
        for name in names:
            if "=" not in name and re.fullmatch(r"[A-Za-z_]\w*", name):
                self.s.vars.setdefault(name, self._lookup_word(name))

    def _forget_variables(self) -> None:
        """After ``source FILE``, ``eval $x``, a name reference...: any variable may have any
        value (HOME stays the home directory: treated as such however it is written)."""
        home = self.s.vars.get("HOME", Word(self.s.home))
        self.s.vars = {"HOME": _union(home, Word(self.s.home))}
        self.s.arrays = {}
        self.s.env_known = False
        self.s.positional = None

    def redirected(self, n: Node, ctx: _Ctx, fed: list[str] | None = None) -> None:
        body = n.child_by_field_name("body")
        redirects = [c for c in n.named_children if c != body]
        extra: list[Node] = []
        writes: list[Word] = []
        stdin = ctx.stdin
        stdin_file: Word | None = None
        script: list[str] | None = fed
        later: list[Node] = []  # heredocs: the rest of their line is parsed inside them
        for r in redirects:
            if r.type == "file_redirect":
                dests = r.children_by_field_name("destination")
                # tree-sitter-bash misparse: `rm 2>/dev/null -rf /` puts `-rf /` in the redirect.
                # Bash treats those words as arguments of the command: so do we.
                extra.extend(dests[1:])
                op = next((c.type for c in r.children if not c.is_named), "")
                fd = next((self._t(c) for c in r.named_children if c.type == "file_descriptor"),
                          None)  # fmt: skip
                target = self.word(dests[0], ctx) if dests else Word("")
                if op in _OUTPUT_REDIRECTS and op != "<>":
                    writes.append(target)
                elif op in _INPUT_REDIRECTS and fd in (None, "0"):
                    stdin, stdin_file, script = "file", target, None
                    if op == "<&" and target.text == "0":
                        stdin, stdin_file = ctx.stdin, None
            elif r.type == "heredoc_redirect":
                body_node = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                value = self.word(body_node, ctx) if body_node is not None else Word("")
                stdin, script, stdin_file = "heredoc", list(value.values), None
                later.append(r)
            elif r.type == "herestring_redirect":
                words = [self.word(c, ctx) for c in r.named_children]
                value = _product(_spaced(words))
                stdin, script, stdin_file = "heredoc", [v + "\n" for v in value.values], None
            else:
                self.node(r, ctx)
        inner = ctx._replace(stdin=stdin)
        if body is None:  # `>/dev/sda` alone: a write without a command
            self.emit(Word(":"), (), self._t(n), inner, tuple(writes))
        elif body.type == "command":
            self.command(body, inner, extra, writes, script, stdin_file, self._t(n))
        else:
            if extra:
                what = "words after a redirection of a compound command"
                self.a.problems.append(Problem("misparse", what, self._t(n)))
            redirect = ctx._replace(
                stdin=stdin, writes=ctx.writes + tuple(writes),
                stdin_file=stdin_file if stdin == "file" else ctx.stdin_file,
                fed=tuple(script) if script is not None else ctx.fed,
            )  # fmt: skip
            if body.type == "pipeline":
                self.pipeline(body, ctx, last=redirect)
            else:
                self.node(body, redirect)
        for r in later:
            self._heredoc_rest(n, r, ctx, _stage_names(body, self.src) if body else [])

    def _heredoc_rest(self, stmt: Node, r: Node, ctx: _Ctx, names: list[str]) -> None:
        """tree-sitter-bash puts what follows ``<<EOF`` on its line inside the heredoc node:
        ``| sh``, ``&& cmd``, more redirections. Walk it; stray words there are a misparse."""
        for c in r.named_children:
            if c.type == "heredoc_start":
                if not re.fullmatch(r"[\w.\-'\"\\]+", self._t(c)):
                    what = "a heredoc delimiter with shell syntax in it"
                    self.a.problems.append(Problem("misparse", what, self._t(r)))
            elif c.type in ("heredoc_body", "heredoc_end", "file_descriptor"):
                continue
            elif c.type == "pipeline" or (
                c.type in ("command", "redirected_statement") and _after_pipe(c)
            ):
                stages = _flatten(c, "pipeline")
                left = stmt
                seen = list(names)
                for st in stages:
                    script = self._literal_output(left, ctx)
                    sc = ctx._replace(upstream=Upstream(None, seen, len(seen)), forked=True,
                                 stdin="pipe", certain=False)  # fmt: skip
                    self.child(lambda st=st, sc=sc, s=script: self.stage(st, sc, s))
                    seen.extend(_stage_names(st, self.src))
                    left = st
            elif c.type in ("word", "concatenation", "string", "raw_string", "number"):
                self.a.problems.append(
                    Problem("misparse", "words after a heredoc marker", self._t(r))
                )
            else:
                self.statement(c, ctx)

    # --- simple commands ------------------------------------------------------------------

    def command(
        self,
        n: Node,
        ctx: _Ctx,
        extra: list[Node] | None = None,
        writes: list[Word] | None = None,
        fed: list[str] | None = None,
        stdin_file: Word | None = None,
        source: str | None = None,
    ) -> None:
        name_node = n.child_by_field_name("name")
        args_nodes = n.children_by_field_name("argument") + (extra or [])
        if self.a.words + len(args_nodes) > MAX_WORDS:
            self._limit("too-complex", f"more than {MAX_WORDS} words", self._t(n, 200))
        self._check_newlines(n)
        prefix: list[tuple[str, Word]] = []
        stdin = ctx.stdin
        for c in n.named_children:
            if c.type == "variable_assignment":
                value_node = c.child_by_field_name("value")
                value = self.word(value_node, ctx) if value_node is not None else Word("")
                var = self._t(c.child_by_field_name("name"))
                prefix.append((var, value))
                self._special_assignment(var, value, ctx, self._t(c))
            elif c.type == "file_redirect":  # `cmd >out arg` inside the command node
                dests = c.children_by_field_name("destination")
                args_nodes = args_nodes + dests[1:]
                op = next((x.type for x in c.children if not x.is_named), "")
                target = self.word(dests[0], ctx) if dests else Word("")
                if op in _OUTPUT_REDIRECTS and op != "<>":
                    writes = [*(writes or []), target]
                elif op in _INPUT_REDIRECTS:
                    stdin, stdin_file, fed = "file", target, None
            elif c.type == "herestring_redirect":
                words = [self.word(x, ctx) for x in c.named_children]
                fed = [v + "\n" for v in _product(_spaced(words)).values]
                stdin = "heredoc"
        writes = [*ctx.writes, *(writes or [])]
        if stdin_file is None and stdin == ctx.stdin:
            stdin_file = ctx.stdin_file
        if fed is None and stdin == ctx.stdin and ctx.fed is not None:
            fed = list(ctx.fed)
        if fed is not None and stdin == "job":
            stdin = "heredoc"
        if name_node is None:
            if prefix and ctx.certain:  # `FOO=1` alone: a shell assignment
                for var, value in prefix:
                    self.set_var(var, value, True)
            return
        inner = name_node.named_children[0] if name_node.named_children else name_node
        words = self._split_words(inner, ctx, name=True)
        form = _name_form(inner)
        first_arg = len(words)
        for a in _merge_dollar(args_nodes):
            words.extend(self._split_words(a, ctx))
        if form == "computed" and not _path_tail(inner, self.src):
            self.a.problems.append(Problem(
                "dynamic", "a command name built from expansions is only known at run time",
                self._t(inner)))  # fmt: skip
            return
        if form == "variable" and (first_arg == 0 or words[0].known == ""):
            # an unset variable as the name: the next word would be run, or nothing
            nxt = words[first_arg] if first_arg < len(words) else None
            if first_arg > 0 or (nxt is not None and nxt.text.startswith("-")):
                self.a.problems.append(Problem(
                    "dynamic", "the command name is an empty variable", self._t(n)))  # fmt: skip
                return
        if not words:
            return  # `$EMPTY` alone runs nothing
        self.emit(
            words[0],
            tuple(words[1:]),
            source or self._t(n),
            ctx._replace(stdin=stdin),
            tuple(writes or ()),
            fed,
            stdin_file,
        )

    def emit(
        self,
        name: Word,
        args: tuple[Word, ...],
        source: str,
        ctx: _Ctx,
        writes: tuple[Word, ...] = (),
        fed: list[str] | None = None,
        stdin_file: Word | None = None,
    ) -> None:
        """Record one simple command, then look inside it (wrappers, payloads)."""
        if len(self.a.commands) >= MAX_COMMANDS:
            self._limit("too-complex", f"more than {MAX_COMMANDS} commands", source)

        if ctx.depth > MAX_DEPTH:
            self.a.problems.append(Problem("too-deep", "nested too deeply", source[:200]))
            return
        if _SELF_EXE.match(name.text):
            name = Word("/proc/self/exe")  # `/proc/$$/exe`: the shell, whatever the pid
        names = self._command_names(name, source)
        if names is None:
            return
        for raw in names:
            cmd_name = normalize_name(raw)
            if _SELF_EXE.match(_norm(raw)):
                cmd_name = "sh"  # the shell running the line
            if cmd_name in self.s.aliases:
                self.a.problems.append(Problem(
                    "dynamic", "an alias defined in the command line is used as a command",
                    source[:200]))  # fmt: skip
            cmd = SimpleCommand(
                name=cmd_name,
                args=args,
                source=source[:2000],
                raw_name=raw,
                upstream=ctx.upstream,
                stdin_script=fed is not None,
                writes=writes,
                via=ctx.via,
                stdin=ctx.stdin,
                stdin_file=stdin_file,
                stdin_text=tuple(fed) if fed is not None else None,
                cwd=self.s.cwd,
                forked=ctx.forked,
                function=ctx.function,
            )
            if ctx.function is not None:
                self.a.functions.setdefault(ctx.function, set()).add((cmd_name, ctx.forked))
            if cmd_name in _STOPPERS:
                self.stoppers += 1
            _unwrap(self, cmd, ctx, fed)
            if (cmd_name in self.defined or cmd_name in self.s.functions) and "/" not in raw:
                self._call(cmd, ctx)

    def _command_names(self, name: Word, source: str) -> list[str] | None:
        """The command names a name word may be; None when it cannot be known (recorded)."""
        if _FD_PATHS.match(name.text):
            self.a.problems.append(
                Problem("dynamic", "a program run from a file descriptor", source[:200])
            )
            return None
        if name.dynamic:
            tail = name.tail or ""
            base = tail.rsplit("/", 1)[-1] if "/" in tail else ""
            if not base or _has_glob(base):
                self.a.problems.append(
                    Problem("dynamic", "the command name is only known at run time", name.text)
                )
                return None
            return [tail]  # `$VENV/bin/python`: whatever the directory, the program is python
        out = []
        for v in name.values:
            if _has_glob(normalize_name(v)):
                self.a.problems.append(Problem(
                    "dynamic", "a glob as the command name is only known at run time",
                    name.text))  # fmt: skip
                return None
            out.append(v)
        return out

    def _call(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """A call of a function defined in the line: its body again, with the call's
        arguments as $1... (``f(){ rm -rf "$1"; }; f ~``). Not into a function already being
        walked for a call (recursion), nor deeper than three calls."""
        name = cmd.name
        if name in self.inlining:
            return  # recursion: the walk in progress reports the body's problems
        if len(self.inlining) >= 3:
            self.a.problems.extend(self.deferred.get(name, ()))  # not walked: as defined
            return
        known = all(a.known is not None for a in cmd.args)
        saved = self.src, self.s.positional
        self.s.positional = tuple(a.known or "" for a in cmd.args) if known else None
        self.inlining.append(name)
        inner = ctx._replace(via=(*ctx.via, f"{name}()"), certain=False)
        try:
            if name in self.defined:
                body, self.src = self.defined[name]
                self.a.nodes += body.descendant_count
                if self.a.nodes > MAX_NODES:
                    self._limit("too-complex", f"more than {MAX_NODES} syntax elements",
                                cmd.source)  # fmt: skip
                self.node(body, inner)
            else:  # defined by an earlier command line typed into the same shell
                self.script(self.s.functions[name], inner)
        finally:
            self.inlining.pop()
            self.src, self.s.positional = saved

    # --- what commands do to the shell itself ---------------------------------------------

    def builtin_effects(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """``cd``, ``read``, ``export``, ``source``...: what the rest of the line sees."""
        name, args = cmd.name, cmd.args
        texts = [a.text for a in args]
        if name in ("cd", "pushd", "popd", "chdir"):
            self._cd(cmd)
        elif name in ("read", "mapfile", "readarray", "getopts", "let", "printf", "wait"):
            targets: list[str] = []
            if name == "read":
                targets = [t for t in _operands(texts, "adinNptu") if _is_name(t)] or ["REPLY"]
                ks = [k for k, t in enumerate(texts) if t.startswith("-") and "a" in t]
                targets += [texts[k + 1] for k in ks if k + 1 < len(texts)]
            elif name in ("mapfile", "readarray"):
                targets = [t for t in _operands(texts, "dnOsucC") if _is_name(t)] or ["MAPFILE"]
                for k, t in enumerate(texts):
                    if t == "-C" and k + 1 < len(texts):  # a callback: code
                        self.payload(args[k + 1], ctx._replace(via=(*ctx.via, "mapfile -C")),
                                     cmd.source)  # fmt: skip
            elif name == "getopts" and len(texts) >= 2:
                targets = [texts[1]]
            elif name == "let":
                targets = [t.split("=", 1)[0] for t in texts if "=" in t]
            elif name == "wait":
                targets = [texts[k + 1] for k, t in enumerate(texts[:-1]) if t == "-p"]
            elif name == "printf" and len(texts) >= 3 and texts[0] == "-v":
                target = texts[1]
                if all(not a.dynamic for a in args[2:]):
                    out = printf_output(args[2].text, [a.text for a in args[3:]])
                    self.set_var(target, Word(out), ctx.certain)
                else:
                    self.set_var(target, _unknown(target, ("printf",)), ctx.certain)
                return
            for t in targets:
                base = t.split("[", 1)[0]
                if _is_name(base):
                    self.s.vars[base] = _unknown(base, (name,))
                    self.s.arrays[base] = None
        elif name in ("export", "declare", "typeset", "local", "readonly"):
            if any(t.startswith("-") and "n" in t for t in texts):
                self._forget_variables()
            for a in args:
                if "=" in a.text and _is_name(a.text.split("=", 1)[0].rstrip("+")):
                    var, _, val = a.text.partition("=")
                    value = Word(val, dynamic=a.dynamic, substituted=a.substituted,
                                 tail="" if a.dynamic else None)  # fmt: skip
                    self.set_var(var.rstrip("+"), value, ctx.certain)
                    self._special_assignment(var, value, ctx, cmd.source)
        elif name == "unset":
            for t in texts:
                if _is_name(t) and "-f" in texts:
                    self.s.functions.pop(t, None)
                    self.defined.pop(t, None)
                elif _is_name(t):
                    self.s.vars[t] = Word("")
                    self.s.arrays.pop(t, None)
        elif name in ("source", "."):
            self._forget_variables()
        elif name == "set":
            ops = texts[1:] if texts[:1] == ["--"] else [t for t in texts if t[:1] not in "-+"]
            if texts[:1] == ["--"] or ops:
                known = all(not a.dynamic for a in args)
                self.s.positional = tuple(ops) if known else None
        elif name == "shift":
            self.s.positional = None
        elif name == "alias":
            for t in texts:
                if "=" in t:
                    self.s.aliases.add(t.split("=", 1)[0])
        elif name == "unalias":
            self.s.aliases.difference_update(texts)

    def _cd(self, cmd: SimpleCommand) -> None:
        operands = [a for a in cmd.args if not (a.text.startswith("-") and len(a.text) > 1)]
        if cmd.name == "popd":
            new: str | None = None
        elif not operands:
            new = self.s.home
        elif operands[0].text == "-":
            new = self.s.oldcwd
        else:
            target = operands[0]
            values = {self._abs(v) for v in target.values}
            new = None if target.dynamic or len(values) != 1 else values.pop()
        self.s.oldcwd, self.s.cwd = self.s.cwd, new
        self.s.vars["PWD"] = Word(new) if new is not None else _unknown("PWD")
        old = self.s.oldcwd
        self.s.vars["OLDPWD"] = Word(old) if old is not None else _unknown("OLDPWD")

    def _abs(self, path: str) -> str | None:
        if path.startswith("/"):
            return _norm(path)
        if path == "~" or path.startswith("~/"):
            return _norm(self.s.home + path[1:])
        if self.s.cwd is None or path.startswith("~"):
            return None
        return _norm(posixpath.join(self.s.cwd, path))

    # --- payloads -------------------------------------------------------------------------

    def payload(self, arg: Word, ctx: _Ctx, source: str, *, child: bool = False) -> None:
        """Shell code in a word (``bash -c CODE``, ``eval CODE``, ``trap CODE``)."""
        if arg.dynamic:
            what = "a shell payload known only at run time"
            self.a.problems.append(Problem("dynamic", what, arg.text[:200] or source[:200]))
            return
        for value in arg.values:
            if value in self.payloads:  # `sh -c "$0 & $0" "sh -c ..."`: it runs itself
                self.a.bombs.append(f"{source[:120]} (a shell command that runs itself)")
                return
            self.payloads.append(value)
            try:
                if child:
                    self.child(lambda v=value: self.script(v, ctx._replace(depth=ctx.depth + 1)))
                else:
                    self.script(value, ctx._replace(depth=ctx.depth + 1))
            finally:
                self.payloads.pop()

    # --- words ----------------------------------------------------------------------------

    def word(self, n: Node, ctx: _Ctx) -> Word:
        """The value of a word node; commands inside it are walked as well."""
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            if self.a.over_time():
                self._limit("too-complex", f"more than {MAX_CPU_S} s of work to check", self._t(n))
            return self._word(n, ctx)
        finally:
            self.nesting -= 1

    def _word(self, n: Node, ctx: _Ctx) -> Word:
        kind = n.type
        if kind == "word":
            raw = self._t(n, MAX_VALUE_CHARS * 4)
            return self._tilde(_unescape_word(raw))
        if kind in ("number", "variable_name", "test_operator", "regex", "extglob_pattern",
                    "heredoc_content"):  # fmt: skip
            return Word(self._t(n, MAX_VALUE_CHARS * 4))
        if kind == "raw_string":
            return Word(self._t(n, MAX_VALUE_CHARS * 4)[1:-1])
        if kind == "ansi_c_string":
            return Word(ansi_c(self._t(n, MAX_VALUE_CHARS * 4)[2:-1]))
        if kind == "string_content":
            return Word(re.sub(r"\\([$`\"\\\n])", r"\1", self._t(n, MAX_VALUE_CHARS * 4)))
        if kind in ("string", "translated_string"):
            if kind == "translated_string":
                inner = next(iter(n.named_children), None)
                return self.word(inner, ctx) if inner is not None else Word("")
            parts = [self.word(c, ctx) for c in n.named_children]
            return self._join_string(n, parts)
        if kind == "heredoc_body":
            parts = [self.word(c, ctx) for c in n.named_children]
            return self._join_string(n, parts, quotes=0) if parts else Word(self._t(n, 10**6))
        if kind == "concatenation":
            kids = n.named_children
            parts = [self.word(c, ctx) for c in kids]
            if kids and kids[0].type == "word" and parts[0].text == "~" and len(parts) > 1:
                # `~$USER`: bash leaves it alone, but `eval` and friends expand it: a home
                parts[0] = Word("~", (self.s.home,))
            return _product(parts)
        if kind == "simple_expansion":
            return self._lookup(self._t(n)[1:])
        if kind == "expansion":
            return self._expansion(n, ctx)
        if kind in ("command_substitution", "process_substitution"):
            before = len(self.a.commands)
            sub_ctx = ctx._replace(forked=True, certain=False)
            self.child(lambda: self.statements(n, sub_ctx))
            names = tuple(dict.fromkeys(c.name for c in self.a.commands[before:]))
            text = self._t(n, 400)
            if kind == "command_substitution" and len(self.a.commands) == before + 1:
                known = self._known_output(self.a.commands[before], text)
                if known is not None:
                    return known
            if kind == "process_substitution":
                return Word(text, (text,), dynamic=True, substituted=names or ("<(...)",),
                            tail="", procsub=True)  # fmt: skip
            return Word(text, (text, ""), dynamic=True, substituted=names or ("$(...)",), tail="")
        if kind == "arithmetic_expansion":
            for c in n.named_children:
                self._walk_expression(c, ctx)
            return Word(self._t(n), dynamic=True, tail="")
        if kind in _EXPRESSIONS or kind in ("variable_assignment", "array", "subscript"):
            self._walk_expression(n, ctx)
            return Word(self._t(n), dynamic=True, tail="")
        if kind == "command_name":
            return self.word(n.named_children[0], ctx) if n.named_children else Word("")
        self.a.problems.append(
            Problem("unknown-node", f"shell construct {kind!r} is not analysed", self._t(n))
        )
        return Word(self._t(n), dynamic=True, tail="")

    def _known_output(self, cmd: SimpleCommand, text: str) -> Word | None:
        """``$(pwd)`` is the cwd; ``$(mktemp -d)`` a new name in the temp directory (or in
        its -p/--tmpdir directory, or its template's): known enough to judge paths by."""
        if cmd.name == "pwd" and cmd.cwd is not None:
            return Word(cmd.cwd)
        if cmd.name in ("dirname", "basename", "realpath", "readlink", "echo", "printf"):
            return _simple_output(cmd, text)
        if cmd.name != "mktemp" or any(a.dynamic for a in cmd.args):
            return None
        texts = [a.text for a in cmd.args]
        base = self._lookup("TMPDIR").known or "/tmp"  # noqa: S108 -- mktemp's default
        template = "tmp.XXXXXXXXXX"
        i = 0
        while i < len(texts):
            t = texts[i]
            if t in ("-p", "--tmpdir") and i + 1 < len(texts):
                base, i = texts[i + 1], i + 2
                continue
            if t.startswith("--tmpdir="):
                base = t.split("=", 1)[1]
            elif not t.startswith("-"):
                template = t
                if "/" in t:
                    base = ""
            i += 1
        name = posixpath.join(base, template) if base else template
        return Word(text, (name.replace("X", "x"),), tail=None)

    def _tilde(self, value: str) -> Word:
        if not value.startswith("~"):
            return Word(value)
        head, sep, rest = value[1:].partition("/")
        if head == "":
            home = self.s.home
        elif head == "+" and self.s.cwd is not None:
            home = self.s.cwd
        elif head == "root":
            home = "/root"
        elif re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", head):
            home = f"/home/{head}"  # another user's home: where it usually is
        else:
            return Word(value)
        return Word(value, (home.rstrip("/") + sep + rest if rest or sep else home,))

    def _join_string(self, n: Node, parts: list[Word], quotes: int = 1) -> Word:
        """Rebuild a quoted value from the source so the text between parts is kept."""
        pieces: list[Word] = []
        start = n.start_byte + quotes
        end = n.end_byte - quotes
        pos = start
        for c, w in zip(n.named_children, parts, strict=True):
            if c.start_byte > pos:
                gap = self.src[pos : c.start_byte].decode("utf-8", "replace")
                pieces.append(Word(gap))
            pieces.append(w)
            pos = max(pos, c.end_byte)
        if end > pos:
            pieces.append(Word(self.src[pos:end].decode("utf-8", "replace")))
        return _product(pieces) if pieces else Word("")

    def _lookup_word(self, name: str) -> Word:
        return self._lookup(name)

    def _lookup(self, name: str) -> Word:
        if name in self.s.vars:
            return self.s.vars[name]
        if name.isdigit() or name in ("@", "*", "#"):
            pos = self.s.positional
            if name == "0" or pos is None:
                return _unknown(name)
            if name == "#":
                return Word(str(len(pos)))
            if name in ("@", "*"):
                return Word(" ".join(pos))
            i = int(name)
            return Word(pos[i - 1] if i <= len(pos) else "")
        if name == "PWD" and self.s.cwd is not None:
            return Word(self.s.cwd)
        if name in _SHELL_SET or name in ("?", "$", "!", "-", "_") or not self.s.env_known:
            return _unknown(name)
        return Word("")

    def _expansion(self, n: Node, ctx: _Ctx) -> Word:
        text = self._t(n, MAX_VALUE_CHARS)
        kids = n.named_children
        name_node = next((c for c in kids if c.type in ("variable_name", "special_variable_name")),
                         None)  # fmt: skip
        operand_nodes = [c for c in kids if c is not name_node]
        operand_words = [self.word(c, ctx) for c in operand_nodes]  # walks $(...) inside
        inner = text[2:-1]
        if "@" in inner and re.search(r"@[PEAKaQUuLk]\s*$", inner):
            if re.search(r"@P\s*$", inner):
                self.a.problems.append(
                    Problem("dynamic", "prompt expansion ${...@P} can run commands", text)
                )
            return Word(text, (text, ""), dynamic=True, tail="")
        m = re.fullmatch(r"([#!]?)([A-Za-z_]\w*|\d+|[@*#?$!_-])(.*)", inner, re.S)
        if m is None or (name_node is None and not m.group(2)):
            return Word(text, (text, ""), dynamic=True, tail="")
        prefix, name, op = m.group(1), m.group(2), m.group(3)
        if prefix == "!":
            return Word(text, (text, ""), dynamic=True, tail="")  # indirection
        if op.startswith("["):
            elements = self._array(name, op)
            if elements is None or prefix:
                origin = self.s.vars[name].substituted if name in self.s.vars else ()
                return Word(text, (text, ""), dynamic=True, substituted=origin, tail="")
            return _product(_spaced(list(elements))) if elements else Word("")
        value = self._lookup(name)
        if prefix == "#":
            return Word(str(len(value.text)) if not value.dynamic else text,
                        dynamic=value.dynamic, tail="" if value.dynamic else None)  # fmt: skip
        if not op:
            return value
        operand = _product(operand_words) if operand_words else Word("")
        dm = re.match(r"(:?)([-=?+])", op)
        if dm is not None:
            colon, kind = dm.group(1), dm.group(2)
            empty = value.known == "" if colon else (value.known == "" and name not in self.s.vars)
            if kind in "-=":
                if value.known is not None and not empty:
                    return value
                result = operand if value.known is not None else _union(value, operand)
                if kind == "=" and _is_name(name):
                    self.set_var(name, result, ctx.certain)
                if value.dynamic:
                    return Word(text, tuple(v for v in result.values if v != ""),
                                dynamic=True, substituted=result.substituted, tail="")  # fmt: skip
                return result
            if kind == "?":
                if value.dynamic:  # never empty: the shell stops the line when it is
                    vals = tuple(v for v in value.values if v != "")
                    return Word(text, vals or (text,), dynamic=True, tail="")
                if empty or value.known == "":
                    # the shell stops the line here: nothing after it runs with this value
                    return Word(text, dynamic=True, tail="")
                return value
            # `+`: the operand when set
            if value.known is not None:
                return operand if not empty else Word("")
            return Word(text, (*operand.values, ""), dynamic=True, tail="")
        if value.dynamic:
            if name == "HOME":
                return Word(text, (self.s.home,), dynamic=True, tail="")
            return Word(text, (text, ""), dynamic=True, tail="")
        return _string_operation(value, op, operand, text)

    def _array(self, name: str, op: str) -> tuple[Word, ...] | None:
        """The elements ``${name[...]}`` stands for, when known: ``[@]``/``[*]``, ``[N]``."""
        m = re.fullmatch(r"\[\s*(@|\*|\d+)\s*\]", op)
        if m is None:
            return None
        if name in self.s.arrays:
            elements = self.s.arrays[name]
        elif name in self.s.vars:  # a scalar is an array of one
            elements = (self.s.vars[name],)
        elif self.s.env_known:
            elements = ()
        else:
            return None
        if elements is None:
            return None
        if m.group(1) in ("@", "*"):
            return elements
        i = int(m.group(1))
        return (elements[i],) if i < len(elements) else ()

    def _walk_expression(self, n: Node, ctx: _Ctx) -> None:
        if n.type in ("command_substitution", "process_substitution", "expansion",
                      "simple_expansion"):  # fmt: skip
            self.word(n, ctx)
            return
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                self._limit("too-deep", f"nested more than {MAX_NESTING} levels", self._t(n))
            for c in n.named_children:
                self._walk_expression(c, ctx)
        finally:
            self.nesting -= 1

    def _split_words(self, n: Node, ctx: _Ctx, name: bool = False) -> list[Word]:
        """What the shell makes of one word node: an unquoted ``$x`` whose known value has
        spaces is several words (``x="rm -rf /"; $x``), an empty one none; an unquoted
        ``{a,b}`` is brace-expanded into several words."""
        self.a.words += 1
        if self.a.words > MAX_WORDS:
            self._limit("too-complex", f"more than {MAX_WORDS} words", self._t(n, 200))
        word = self.word(n, ctx)
        text = self._t(n, 16)
        if text in ("$@", "$*", "${@}", "${*}", '"$@"', '"${@}"') and self.s.positional is not None:
            return [Word(p) for p in self.s.positional]  # each parameter its own word
        each = re.fullmatch(r'"?\$\{(\w+)\[[@*]\]\}"?', self._t(n, 200))
        if each is not None:  # "${arr[@]}": each element its own word
            elements = self._array(each.group(1), "[@]")
            if elements is not None:
                return list(elements)
            return [word]
        if n.type in ("simple_expansion", "expansion"):
            if not word.dynamic and len(word.values) == 1:
                return [Word(p) for p in word.text.split()]
            return [word]
        if n.type in ("word", "concatenation") and "{" in self._t(n):
            if not word.dynamic and _unquoted_only(n):
                expanded = brace_expand(self._t(n))
                if expanded is not None:
                    return [self._tilde(x) for x in expanded if x != ""]
            elif name and _unquoted_only(n) and brace_expand(self._t(n)) is not None:
                self.a.problems.append(Problem(
                    "dynamic", "brace expansion in a command name", self._t(n)))  # fmt: skip
        return [word]

    # --- guards ---------------------------------------------------------------------------

    def _check_newlines(self, n: Node) -> None:
        """tree-sitter-bash can fold a command on the next line into this one's arguments."""
        kids = n.named_children
        for i in range(1, len(kids)):
            gap = self.src[kids[i - 1].end_byte : kids[i].start_byte]
            joined = gap.replace(b"\\\n", b"")
            if b"\n" in joined or (gap and not joined):
                # a line break tree-sitter folded into the words, or `r\<newline>m`, which bash
                # reads as one word (`rm`) and tree-sitter as two
                self.a.problems.append(
                    Problem("misparse", "a line break inside one command's words", self._t(n))
                )
                return

    def _test_indirection(self, n: Node) -> None:
        # `[[ -v 'a[$(cmd)]' ]]` evaluates the subscript: a literal that is code.
        text = self._t(n)
        if re.search(r"-v\s", text) and ("$(" in text or "`" in text):
            self.a.problems.append(Problem("dynamic", "a test -v subscript can run commands", text))

    def _literal_output(self, n: Node, ctx: _Ctx) -> list[str] | None:
        """What ``echo``/``printf`` of literals, or ``cat`` of a heredoc, writes; else None."""
        cmd_node = n.child_by_field_name("body") if n.type == "redirected_statement" else n
        if cmd_node is None or cmd_node.type != "command":
            return None
        name_node = cmd_node.child_by_field_name("name")
        if name_node is None:
            return None
        probe = _Walker(Analysis(), self.s.copy())
        probe.src = self.src
        name = normalize_name(_unescape_word(self._t(name_node)))
        try:
            words = [probe.word(a, ctx) for a in _merge_dollar(
                cmd_node.children_by_field_name("argument"))]  # fmt: skip
        except _Limit:
            return None
        if any(w.dynamic for w in words):
            return None
        texts = [w.text for w in words]
        if name == "echo":
            newline = "\n"
            while texts and re.fullmatch(r"-[neE]+", texts[0]):
                newline = "" if "n" in texts[0] else newline
                texts = texts[1:]
            plain = " ".join(texts) + newline
            return list(dict.fromkeys([plain, ansi_c(plain)]))  # dash's echo reads escapes
        if name == "printf" and texts:
            if texts[0] == "--":
                texts = texts[1:]
            return [printf_output(texts[0], texts[1:])] if texts else None
        if name == "cat" and not words and n.type == "redirected_statement":
            for r in n.named_children:
                if r.type == "heredoc_redirect":
                    b = next((c for c in r.named_children if c.type == "heredoc_body"), None)
                    if b is None:
                        return [""]
                    value = probe.word(b, ctx)
                    return None if value.dynamic else [value.text]
                if r.type == "herestring_redirect":
                    value = _product(_spaced([probe.word(c, ctx) for c in r.named_children]))
                    return None if value.dynamic else [value.text + "\n"]
        return None


def _simple_output(cmd: SimpleCommand, text: str) -> Word | None:
    """What ``dirname``/``basename``/``realpath``/``readlink -f``/``echo``/``printf`` of known
    words print (without the trailing newline, as ``$(...)`` drops it)."""
    if any(a.known is None for a in cmd.args) or cmd.stdin_script:
        return None
    texts = [a.known or "" for a in cmd.args]
    ops = [t for t in texts if not t.startswith("-")]
    if cmd.name == "printf":
        return Word(text, (printf_output(texts[0], texts[1:]).rstrip("\n"),)) if texts else None
    if cmd.name == "echo":
        return Word(text, (" ".join(t for t in texts if not re.fullmatch(r"-[neE]+", t)),))
    if len(ops) != 1:
        return None
    path = ops[0]
    if cmd.name == "dirname":
        out = posixpath.dirname(path.rstrip("/")) or ("/" if path.startswith("/") else ".")
    elif cmd.name == "basename":
        out = posixpath.basename(path.rstrip("/"))
    elif cmd.name == "readlink" and not any(t in ("-f", "-e", "-m") for t in texts):
        return None
    elif cmd.cwd is not None or path.startswith("/"):  # realpath, readlink -f
        out = _norm(posixpath.join(cmd.cwd or "/", path))
    else:
        return None
    return Word(text, (out,))


def _string_operation(value: Word, op: str, operand: Word, text: str) -> Word:
    """``${x%pat}``, ``${x#pat}``, ``${x/a/b}``, ``${x:1:2}``, ``${x^^}`` on a known value."""
    v = value.text
    pattern = operand.text
    try:
        if op.startswith(("%%", "%", "##", "#")):
            greedy = op.startswith(("%%", "##"))
            suffix = op.startswith("%")
            # suffixes longest first, prefixes shortest first
            cands = [v[i:] if suffix else v[:i] for i in range(len(v) + 1)]
            # `%%`: the longest suffix, `#`: the shortest prefix; `%` and `##` the other way
            ordered = cands if greedy == suffix else list(reversed(cands))

            for c in ordered:
                if fnmatch.fnmatchcase(c, pattern or ""):
                    return Word(v[: len(v) - len(c)] if suffix else v[len(c) :])
            return Word(v)
        if op.startswith("/"):
            parts = op[1:].lstrip("/#%").split("/", 1)
            old = parts[0] if parts else ""
            new = parts[1] if len(parts) > 1 else ""
            if any(ch in old for ch in "*?[$`\\") or "$" in new:
                return Word(text, (text, ""), dynamic=True, tail="")
            return Word(v.replace(old, new) if op.startswith("//") else v.replace(old, new, 1))
        if op.startswith(":") and re.fullmatch(r":\s*-?\d+(:\s*-?\d+)?", op):
            nums = [int(x) for x in op[1:].split(":")]
            start = nums[0] if nums[0] >= 0 else max(0, len(v) + nums[0])
            if len(nums) == 1:
                return Word(v[start:])
            ln = nums[1]
            return Word(v[start : start + ln] if ln >= 0 else v[start : len(v) + ln])
        if op in ("^^", "^"):
            return Word(v.upper() if op == "^^" else v[:1].upper() + v[1:])
        if op in (",,", ","):
            return Word(v.lower() if op == ",," else v[:1].lower() + v[1:])
    except (ValueError, IndexError):
        pass
    return Word(text, (text, ""), dynamic=True, tail="")


def _is_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_]\w*", text))


def _operands(texts: list[str], value_flags: str) -> list[str]:
    """Operands of a builtin whose short flags in ``value_flags`` take a value."""
    out: list[str] = []
    i = 0
    while i < len(texts):
        t = texts[i]
        if t == "--":
            out.extend(texts[i + 1 :])
            break
        if t.startswith("-") and len(t) > 1:
            if t[-1] in value_flags and len(t) == 2:
                i += 1
            i += 1
            continue
        out.append(t)
        i += 1
    return out


def _has_glob(text: str) -> bool:
    return "*" in text or "?" in text or bool(re.search(r"\[[^\]]+\]", text))


def _endless(n: Node, kind: str, src: bytes) -> bool:
    """``while true``, ``while :``, ``until false``, ``for ((;;))``, ``while [ 1 ]``."""
    text = src[n.start_byte : min(n.end_byte, n.start_byte + 200)].decode("utf-8", "replace")
    if kind == "c_style_for_statement":
        return bool(re.match(r"for\s*\(\(\s*[^;]*;\s*;", text))
    if kind != "while_statement":
        return False
    return bool(re.match(
        r"(while\s+(true|:|/bin/true|/usr/bin/true|\[\s*1\s*\]|\[\[\s*1\s*\]\]|\(\(\s*1\s*\)\))"
        r"|until\s+(false|/bin/false|!\s*true))\s*(;|\n|do\b)", text))  # fmt: skip


def _reads_input(n: Node, src: bytes) -> bool:
    """``while read ...``: fed by ``yes``, it never ends."""
    text = src[n.start_byte : min(n.end_byte, n.start_byte + 200)].decode("utf-8", "replace")
    return bool(re.match(r"while\s+(IFS=\S*\s+)?read\b", text))


def _merge_dollar(nodes: list[Node]) -> list[Node]:
    """tree-sitter-bash reads ``$"text"`` in an argument as a bare ``$`` then a string: bash
    reads one word (a translated string). Drop the ``$``."""
    out = []
    for i, c in enumerate(nodes):
        if not c.is_named and c.type == "$":
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            if nxt is not None and nxt.start_byte == c.end_byte and nxt.type == "string":
                continue
        if c.is_named:
            out.append(c)
    return out


_EXPANDING = frozenset({"simple_expansion", "expansion", "command_substitution",
                        "arithmetic_expansion", "process_substitution"})  # fmt: skip


def _name_form(n: Node) -> str:
    """How a command name is written: ``literal``; ``variable`` (``$x``, ``"${x}"``, one
    expansion and nothing else: resolved from what is known); ``computed`` (expansions joined
    with other text: ``${x}m``, ``$(echo r)m``; only ``$DIR/literal/name`` is accepted)."""
    if n.type in ("simple_expansion", "expansion"):
        return "variable"
    kids = n.named_children
    if n.type == "string" and len(kids) == 1 and kids[0].type in ("simple_expansion",
                                                                    "expansion"):  # fmt: skip
        return "variable"
    todo = list(kids) if n.type in ("concatenation", "string") else [n]
    while todo:
        c = todo.pop()
        if c.type in _EXPANDING:
            return "computed"
        if c.type in ("string", "concatenation"):
            todo.extend(c.named_children)
    return "literal"


def _path_tail(n: Node, src: bytes) -> bool:
    """``$VENV/bin/python``, ``"$HOME/.local/bin/tool"``: after the last expansion comes a
    literal path whose last part names the program, whatever the directory is."""
    last_end = None
    todo = [n]
    while todo:
        c = todo.pop()
        if c.type in _EXPANDING:
            last_end = c.end_byte if last_end is None else max(last_end, c.end_byte)
        elif c.type in ("string", "concatenation"):
            todo.extend(c.named_children)
    if last_end is None:
        return True
    tail = src[last_end : n.end_byte].decode("utf-8", "replace").rstrip('"')
    base = tail.rsplit("/", 1)[-1]
    return "/" in tail and bool(base) and not _has_glob(base) and "$" not in base


def _unquoted_only(n: Node) -> bool:
    return n.type == "word" or all(c.type in ("word",) for c in n.named_children)


def _text(n: Node | None, data: bytes) -> str:
    if n is None:
        return ""
    return data[n.start_byte : min(n.end_byte, n.start_byte + 2000)].decode("utf-8", "replace")


def _first_error(n: Node) -> Node | None:
    todo = [n]
    while todo:
        cur = todo.pop()
        if cur.type == "ERROR" or cur.is_missing:
            return cur
        todo.extend(reversed([c for c in cur.children if c.has_error or c.is_missing]))
    return None


def _after_pipe(child: Node) -> bool:
    prev = child.prev_sibling
    return prev is not None and prev.type in ("|", "|&")


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


def _stage_names(n: Node, src: bytes) -> list[str]:
    if n.type == "redirected_statement":
        body = n.child_by_field_name("body")
        return _stage_names(body, src) if body is not None else []
    if n.type == "command":
        name = n.child_by_field_name("name")
        return [normalize_name(_unescape_word(_text(name, src)))] if name is not None else []
    return [n.type]
