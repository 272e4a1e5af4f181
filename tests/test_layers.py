"""
The house's layers (docs/development.md, "Layers, and what each may
import"): a module imports only from its own layer and the layers below.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: layer of each module (the longest matching prefix wins), lowest first
LAYERS = [
    ("ground floor", ("tokengate.tokens", "tokengate.apps", "tokengate.store",
                      "tokengate.redisclient", "tokengate.jsonvalue", "tokengate.logsafe",
                      "tokengate.limits", "tokengate.metrics", "tokengate.config",
                      "tokengate.rtmp", "tokengate.rtmp.core", "tokengate.rtmp.amf0",
                      "tokengate.rtmp.errors",
                      "tokengate.srt", "tokengate.access.names", "tokengate.access.totp",
                      "tokengate.cluster.registry", "tokengate.reuseport")),
    ("media", ("tokengate.media", "tokengate.cluster.feed")),
    ("access", ("tokengate.access", "tokengate.auth", "tokengate.cluster")),
    ("adapters", ("tokengate.rtmp.protocol", "tokengate.srt.protocol", "tokengate.webrtc",
                  "tokengate.web", "tokengate.cluster.origin")),
    ("composition root", ("tokengate.server", "tokengate.tap", "tokengate.workers")),
]


def layerOf(module: str) -> int:
    """
    The index in L{LAYERS} of C{module}'s layer (longest prefix match).
    """
    best, found = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    if found < 0:
        raise LookupError(module)
    return found


def modules() -> dict[str, str]:
    """
    Every module under tokengate/, by dotted name, with its path.
    """
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "tokengate")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[: -len(".__init__")]
                found[dotted] = path
    return found


def imported(path: str) -> set[str]:
    """
    The tokengate modules a file imports (at any depth: function-level
    imports count too).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("tokengate"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("tokengate"):
                names.add(node.module)
    return names


class LayerTests(SynchronousTestCase):
    def test_everyModuleHasALayer(self) -> None:
        found = modules()
        self.assertGreater(len(found), 50)
        for module in found:
            if module != "tokengate":
                layerOf(module)

    def test_importsGoDown(self) -> None:
        wrong = []
        found = modules()
        for module, path in found.items():
            if module == "tokengate":
                continue
            mine = layerOf(module)
            for name in imported(path):
                if name != "tokengate" and layerOf(name) > mine:
                    wrong.append("{} ({}) imports {} ({})".format(
                        module, LAYERS[mine][0], name, LAYERS[layerOf(name)][0]))
        self.assertEqual(wrong, [])

    def test_noRelativeImports(self) -> None:
        relative = []
        for module, path in modules().items():
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            relative += [module for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and node.level]
        self.assertEqual(relative, [])


class PackagingTests(SynchronousTestCase):
    def test_everyPackageInstalled(self) -> None:
        """
        C{pip install .} installs every package under tokengate/ (setup.py
        lists them one by one).
        """
        with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        listed: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "packages":
                assert isinstance(node.value, ast.List)
                listed = {ast.literal_eval(e) for e in node.value.elts}
        packages = {m for m, path in modules().items() if path.endswith("__init__.py")}
        self.assertTrue(packages)
        self.assertEqual(packages - listed, set())
