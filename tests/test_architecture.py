"""The project's shape, checked: imports form layers with no cycles, and the engine's package
shows its engine. Read from the source (ast), so a lazy import inside a function counts too."""
import ast

from conftest import ROOT

PACKAGES = ("costeer", "fields", "studies", "ui", "user_store")
# The engine's core: steering/, engine/ (the token loop, the cloud and device sides), models/.
# serving/, evaluation/, bench/ and the CLI are costeer's outer ring and may use more; the core's
# one outer name is models/options.py (the CLI's and the app's model options).
CORE = ("costeer.steering", "costeer.engine", "costeer.models")
OUTER = {"costeer.models.options"}
SERVING = ("gradio", "fastapi", "starlette", "uvicorn", "sqlite_utils", "sqlite3")


def modules() -> dict:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path, known: set) -> tuple[set, set]:
    """(the project's modules `name` imports, the outside top-level packages it imports)."""
    ours, outside = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        else:
            continue
        for target in targets:
            hit = target
            while hit and hit not in known:
                hit = hit.rpartition(".")[0]
            if hit and hit != name:
                ours.add(hit)
            elif not hit:
                outside.add(target.split(".")[0])
    return ours, outside


def graph():
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_no_import_cycles():
    edges = {name: ours for name, (ours, _) in graph().items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if nxt == node.rpartition(".")[0]:
                continue  # a module importing its own package's face is not a cycle of jobs
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == [], cycles


def test_layers_point_down():
    """app → ui → studies → fields → user_store, and costeer beside them: nothing below imports
    what is above it, the domain layer has no Gradio, and the engine's core no store, UI or server."""
    def layer(name):
        return name.split(".")[0]

    problems = []
    for name, (ours, outside) in graph().items():
        above = {"app": set(), "ui": {"app"}, "studies": {"app", "ui"}, "fields": {"app", "ui", "studies"},
                 "user_store": {"app", "ui", "studies", "fields", "costeer"},
                 "costeer": {"app", "ui", "studies", "fields"}}[layer(name)]
        problems += [f"{name} imports {t}" for t in ours if layer(t) in above]
        if layer(name) in ("studies", "fields", "user_store", "costeer"):
            problems += [f"{name} imports gradio" for t in outside if t == "gradio"]
        if name.startswith(CORE) and name not in OUTER:
            problems += [f"{name} (engine core) imports {t}" for t in ours
                         if t != "costeer" and not t.startswith(CORE) or t in OUTER]
            problems += [f"{name} (engine core) imports {t}" for t in outside if t in SERVING]
    assert problems == [], problems


def test_the_package_face_shows_the_engine():
    import costeer
    from costeer.engine.decoding import CoSteerEngine, build_engine

    assert costeer.CoSteerEngine is CoSteerEngine and costeer.build_engine is build_engine
    assert {"CoSteerEngine", "build_engine", "DecodeSpec", "SteeringParams", "Sampling", "load_model"} <= set(costeer.__all__)
    assert all(getattr(costeer, name) is not None for name in costeer.__all__)


def test_no_function_is_longer_than_a_screen():
    """60 lines: a function that does one job fits on a screen. The CLIs' argument parsers are
    lists of options and are left out."""
    parsers = {"build_parser"}
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in parsers:
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], long
