"""How every widget shows its figure."""

from __future__ import annotations

import matplotlib.pyplot as plt


def show(fig):
    """Display a figure inside an ipywidgets output and free it."""
    plt.show()
    return fig
