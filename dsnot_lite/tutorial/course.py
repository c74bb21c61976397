"""Small pieces every notebook of the course shares: the fast-mode banner and formatted claims.

``fast_banner(FAST, cannot_show)`` says, at the top of a notebook run in fast mode (tiny
calibration, few windows, the first blocks only: what CI and ``make book FAST=1`` run), which of
the notebook's claims fast mode cannot show; those claims are asserted only in full mode.
"""

from __future__ import annotations

from collections.abc import Sequence


def fast_banner(fast: bool, cannot_show: Sequence[str]):
    """A Markdown banner: in fast mode, the claims this run cannot show; in full mode, one line."""
    from IPython.display import Markdown

    if not fast:
        return Markdown("> **Full mode**: every claim in the text is computed and asserted by this run.")
    items = "\n".join(f"> - {claim}" for claim in cannot_show)
    return Markdown(
        "> **Fast mode** (`DSNOT_LITE_FAST=1`: tiny calibration, few evaluation windows, first blocks only). "
        "The code and the checks run, but the numbers are too small a sample to show:\n" + items + "\n>\n"
        "> Those claims are asserted only in full mode (unset `DSNOT_LITE_FAST`); where the text quotes them, "
        "it says so."
    )
