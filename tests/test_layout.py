"""The code's shape, checked: no import circle among chatbot's modules, no module past about
250 lines without a note saying why, and the README's map naming every package and module."""
import ast
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chatbot"
MAX_LINES = 260
EARNED = "Its size is earned"  # a long module's docstring says why, after these words



def parse(text):
    """ast.parse in a thread of its own: CPython 3.11 can leave a stale recursion depth in a
    thread that caught a RecursionError (the suite's deeply nested JSON does), and its AST
    constructor then raises SystemError (gh-106905)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(ast.parse, text).result()

def modules():
    """{dotted name: path} of every module in chatbot/."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name, path, known):
    """The chatbot modules `name` imports, anywhere in it (a function's import runs too)."""
    out = set()
    for node in ast.walk(parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports pkg, and pkg.sub when sub is a module
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    # A module's own packages are imported before it: not an edge of its choosing.
    return {t for t in out if not name.startswith(t + ".")}


def cycles(graph):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back_through_others():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_no_module_is_long_without_saying_why():
    long = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and EARNED not in (ast.get_docstring(parse(text)) or ""):
            long.append(f"{name}: {text.count(chr(10))} lines")
    assert long == []


def test_the_readme_maps_every_package_and_top_level_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(chatbot/[\w/]*?)(?:\.py)?/?`", section))
    parts = {p.relative_to(ROOT).as_posix() for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists())
             or (p.suffix == ".py" and p.name != "__init__.py")}
    parts |= {str(Path(p).with_suffix("")) for p in parts if p.endswith(".py")}
    missing = {p for p in parts if not p.endswith(".py")} - named
    assert not missing, f"README's map lacks {sorted(missing)}"
    stale = {n for n in named if not (ROOT / n).exists() and not (ROOT / f"{n}.py").exists()}
    assert not stale, f"README's map names what is not there: {sorted(stale)}"
