"""Progress bars (sinternal_lib/progress.py): in a notebook kernel a bar leaves one line with its final state in
the executed copy (no widget state is saved there); outside, tqdm's text bar."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from tqdm import tqdm

from sinternal_lib.progress import bar


def test_outside_a_notebook_it_is_the_text_bar():
    b = bar(total=2, desc="x", disable=True)
    assert isinstance(b, tqdm)


@pytest.mark.slow
def test_executed_notebook_keeps_the_final_line_once():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from sinternal_lib.progress import bar\n"
        "b = bar(total=3, desc='demo', unit='item')\n"
        "for _ in range(3):\n    b.update(1)\n"
        "b.close()")])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outs = nb.cells[0].outputs
    assert [o.output_type for o in outs] == ["display_data"]  # one output, no stderr stream
    text = outs[0]["data"]["text/plain"]
    assert text.startswith("demo: 100%") and "3/3" in text and "widget" not in str(outs[0]["data"].keys())
