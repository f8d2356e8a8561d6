# Hosted notebooks (Google Colab, Kaggle) start without the kit: this cell fetches it once, installs it and
# moves into its notebooks/ folder. On a local kernel (the kit's own .venv) it does nothing.
# Set SINTERNAL_KIT_SOURCE first: a git URL of the kit (your fork's) or a folder holding an uploaded copy.
import os
import subprocess
import sys

if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
    try:
        import sinternal_lib  # noqa: F401  (installed by an earlier run of this cell)
    except ImportError:
        _src = os.environ.get("SINTERNAL_KIT_SOURCE", "")
        if not _src:
            raise RuntimeError("hosted notebook: set SINTERNAL_KIT_SOURCE to the kit's git URL or to a folder "
                               "holding a copy of it (os.environ['SINTERNAL_KIT_SOURCE'] = ...), then rerun this cell")
        _kit = _src if os.path.isdir(_src) else os.path.abspath("sinternal-kit")
        if not os.path.isdir(_kit):
            subprocess.run(["git", "clone", "--depth", "1", _src, _kit], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", _kit], check=True)
        sys.path.insert(0, _kit)
        os.chdir(os.path.join(_kit, "notebooks"))  # recipes and data paths resolve from the kit's folder
