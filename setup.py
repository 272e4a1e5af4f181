import os
import shutil
import subprocess
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = os.path.dirname(os.path.abspath(__file__))

#: The npm project that declares the player page's third-party libraries.
PLAYER_DIR = os.path.join(HERE, "player")
PLAYER_FILES = ("package.json", "package-lock.json")

#: Where the bundles go, relative to the package root of a build.
VENDOR_DIR = os.path.join("tokengate", "web", "static", "vendor")

#: (file under node_modules, name in VENDOR_DIR).  The paths are those of the
#: versions pinned in player/package-lock.json; the build fails if one is gone.
VENDOR_FILES = (
    ("hls.js/dist/hls.min.js", "hls.min.js"),
    ("hls.js/LICENSE", "hls.js.LICENSE.txt"),
    ("dashjs/dist/modern/umd/dash.all.min.js", "dash.all.min.js"),
    ("dashjs/dist/modern/umd/dash.all.min.js.LICENSE.txt", "dash.all.min.js.LICENSE.txt"),
    ("dashjs/LICENSE.md", "dashjs.LICENSE.txt"),
)

SKIP_ENV = "TOKENGATE_SKIP_NPM"


class PlayerBuildError(RuntimeError):
    pass


def build_player_vendor(target, log=print):
    """
    Install the player's npm dependencies (exactly as locked) in a temporary
    copy of player/ and copy their browser bundles into C{target}.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise PlayerBuildError(
            "npm was not found on PATH. Building tokengate needs Node.js and npm to fetch the "
            "player page's libraries (hls.js, dash.js) from the npm registry. Install them "
            "(Debian: apt-get install nodejs npm), or set {}=1 to build without the player "
            "libraries (play.html then cannot play HLS or DASH).".format(SKIP_ENV)
        )
    for name in PLAYER_FILES:
        if not os.path.isfile(os.path.join(PLAYER_DIR, name)):
            raise PlayerBuildError("{} is missing from the source tree".format(os.path.join("player", name)))
    work = tempfile.mkdtemp(prefix="tokengate-player-")
    try:
        for name in PLAYER_FILES:
            shutil.copy2(os.path.join(PLAYER_DIR, name), work)
        cmd = [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
        log("tokengate: running {} in a copy of player/".format(" ".join(cmd[1:])))
        try:
            proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PlayerBuildError("npm ci could not run: {}".format(e)) from e
        if proc.returncode != 0:
            out = proc.stdout.decode("utf-8", "replace")[-4000:]
            raise PlayerBuildError(
                "npm ci failed with exit code {} while fetching the player libraries:\n{}\n"
                "(set {}=1 to build without them)".format(proc.returncode, out, SKIP_ENV)
            )
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        for src, dst in VENDOR_FILES:
            path = os.path.join(work, "node_modules", *src.split("/"))
            if not os.path.isfile(path):
                raise PlayerBuildError(
                    "npm ci succeeded but {} is missing; update VENDOR_FILES in setup.py for "
                    "the versions in player/package-lock.json".format(src)
                )
            shutil.copyfile(path, os.path.join(target, dst))
        log("tokengate: player libraries copied to {}".format(target))
    finally:
        shutil.rmtree(work, ignore_errors=True)


class build_py(_build_py):
    """
    The usual build_py, then the player's libraries from npm into
    tokengate/web/static/vendor/ of the build (of the source tree for an
    editable install, where that folder is git-ignored).
    """

    def run(self):
        super().run()
        if self.dry_run:
            return
        if os.environ.get(SKIP_ENV) == "1":
            if not getattr(self, "editable_mode", False):
                # No stale bundles from an earlier build in the same build dir.
                shutil.rmtree(os.path.join(self.build_lib, VENDOR_DIR), ignore_errors=True)
            self.warn("{}=1: the player libraries are NOT included; play.html will not play "
                      "HLS or DASH".format(SKIP_ENV))
            return
        if getattr(self, "editable_mode", False) or getattr(self, "inplace", False):
            target = os.path.join(HERE, VENDOR_DIR)
        else:
            target = os.path.join(self.build_lib, VENDOR_DIR)
        try:
            build_player_vendor(target, log=lambda msg: self.announce(msg, level=2))
        except PlayerBuildError as e:
            raise SystemExit("error: building the tokengate player failed: {}".format(e))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if os.environ.get(SKIP_ENV) != "1" and not getattr(self, "editable_mode", False):
            for _, dst in VENDOR_FILES:
                path = os.path.join(self.build_lib, VENDOR_DIR, dst)
                if path not in outputs:
                    outputs.append(path)
        return outputs


class sdist(_sdist):
    """
    The usual sdist, plus player/package.json and its lock file, which the
    build step needs.
    """

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        os.makedirs(os.path.join(base_dir, "player"), exist_ok=True)
        for name in PLAYER_FILES:
            shutil.copy2(os.path.join(PLAYER_DIR, name), os.path.join(base_dir, "player", name))


setup(
    name="tokengate",
    version="0.1.0",
    description="A streaming server on Twisted where every publish and play is gated by a one-time token",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Everything maps from the project root: an editable install (pip install
    # -e .) then puts the root itself on sys.path, where twistd finds
    # twisted/plugins/tokengate_plugin.py (a finder-only editable install
    # would import tokengate but hide the plugin from twistd).
    package_dir={"": "."},
    packages=[
        "tokengate",
        "tokengate.access",
        "tokengate.cluster",
        "tokengate.store",
        "tokengate.web",
        "tokengate.rtmp",
        "tokengate.media",
        "tokengate.media.cmaf",
        "tokengate.media.codecs",
        "tokengate.media.recorder",
        "tokengate.webrtc",
        "tokengate.srt",
        "twisted.plugins",
    ],
    package_data={"tokengate.web": ["static/*", "static/vendor/*"]},
    cmdclass={"build_py": build_py, "sdist": sdist},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "autobahn>=24.4",
        "treq>=24.9",
        "attrs>=23.1",
        "zope.interface>=6",
        "PyJWT>=2.8",
        "prometheus-client>=0.20",
        "txredisapi>=1.4.10",
        # WebRTC media relies on aiortc internals (every one is in
        # tokengate/webrtc/aiortcpatches.py, checked at import), so aiortc is
        # pinned (keep aiortcpatches.WRITTEN_FOR equal); av is kept in
        # the range aiortc 1.16.0 declares (verified with 18.1.0).
        "aiortc==1.16.0",
        "av>=18.1,<20",
    ],
    extras_require={
        # mypy and its zope.interface plugin: the type check (mypy.ini).
        "test": ["hypothesis>=6.100", "redis>=5", "pyotp>=2.9", "mypy==2.4.1",
                 "mypy-zope==1.0.17"],
    },
)
