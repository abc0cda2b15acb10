"""A small Sphinx extension for the book's HTML (loaded through _config.yml, local_extensions).

Jupyter Book 1.x with Sphinx 7.4 writes some inline scripts twice on every page (sphinx-thebe's
``const THEBE_JS_URL = ...`` and sphinx-togglebutton's settings): an extension that adds a
script while the build runs registers it with ``filename=None``, the builder's own copy has
``filename=''``, and Sphinx's duplicate check tells them apart. The second ``const`` declaration
is a JavaScript error in every page's console, which the browser test (tests/test_browser.py)
rightly refuses. This extension drops such duplicates from each page's script list.
"""

from __future__ import annotations


def _key(script):
    attributes = tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items()))
    return (getattr(script, "filename", script) or "", attributes)


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
