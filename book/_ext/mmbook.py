"""Sphinx extension of the book: Colab links and the chapter table, both derived from ``_config.yml``.

The repository URL and branch are set once, in ``_config.yml`` (``repository: url`` / ``branch``); Jupyter
Book passes them to the theme as ``html_theme_options["repository_url"]`` / ``["repository_branch"]``, and
this extension builds every Colab link from them. Colab links always point to the *source* notebooks
(``notebooks/NN_topic.ipynb``, committed without outputs), never to the executed copies the book renders
(``notebooks/_executed/``, git-ignored).

Provides
--------
- role ``{colab}`NN_topic```: an "Open in Colab" badge for ``notebooks/NN_topic.ipynb``.
- directive ``{chapter-table}``: a table of every chapter in ``_toc.yml`` (toc order; title, source
  notebook, Colab badge). Adding a chapter to the toc adds it here: no second edit.
- on every chapter page (a document under ``notebooks/_executed/``): a Colab badge under the title.

No network access, no images: the badge is a styled link (``book/_static/mmbook.css``).
"""

from __future__ import annotations

import posixpath
import re

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

COLAB = "https://colab.research.google.com/github"
GITHUB = re.compile(r"^https://github\.com/(?P<slug>[^/]+/[^/]+?)(?:\.git)?/?$")


# --------------------------------------------------------------------------- configuration
def _repo(config) -> tuple[str, str, str]:
    """(``owner/name``, branch, repository URL) from the theme options that Jupyter Book fills."""
    opts = config.html_theme_options or {}
    url = opts.get("repository_url", "")
    m = GITHUB.match(url)
    if not m:
        raise ConfigError(
            f"mmbook: repository.url in _config.yml must be https://github.com/<owner>/<name>, got {url!r}"
        )
    return m["slug"], opts.get("repository_branch", "main"), url


def colab_url(config, stem: str) -> str:
    """Colab URL of the source notebook ``<mmbook_notebooks_dir>/<stem>.ipynb``."""
    slug, branch, _ = _repo(config)
    return f"{COLAB}/{slug}/blob/{branch}/{config.mmbook_notebooks_dir}/{stem}.ipynb"


def source_url(config, stem: str) -> str:
    """GitHub URL of the source notebook."""
    slug, branch, url = _repo(config)
    return f"{url.rstrip('/')}/blob/{branch}/{config.mmbook_notebooks_dir}/{stem}.ipynb"


def _badge(config, stem: str) -> nodes.reference:
    ref = nodes.reference(
        "", "", refuri=colab_url(config, stem), classes=["mmbook-colab"], reftitle=f"Open {stem}.ipynb in Colab"
    )
    ref += nodes.inline("", "Open in", classes=["mmbook-colab-left"])
    ref += nodes.inline("", "Colab", classes=["mmbook-colab-right"])
    return ref


def _chapter_stem(config, docname: str) -> str | None:
    prefix = config.mmbook_executed_dir.rstrip("/") + "/"
    return docname[len(prefix):] if docname.startswith(prefix) else None


# --------------------------------------------------------------------------- role
def colab_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``{colab}`00_world_and_models``` -> "Open in Colab" badge for notebooks/00_world_and_models.ipynb."""
    config = inliner.document.settings.env.config
    stem = text.strip().removesuffix(".ipynb").rsplit("/", 1)[-1]
    return [_badge(config, stem)], []


# --------------------------------------------------------------------------- chapter table
class chapter_table(nodes.General, nodes.Element):
    """Placeholder, replaced in ``doctree-resolved`` once every chapter's title is known."""


class ChapterTable(SphinxDirective):
    """The ``{chapter-table}`` directive: a placeholder node filled with every chapter of the toc."""

    has_content = False
    option_spec = {"class": directives.class_option}

    def run(self):
        """The placeholder node (filled once all documents are read)."""
        node = chapter_table()
        node["classes"] = ["mmbook-chapters", *self.options.get("class", [])]
        return [node]


def _toc_order(env) -> list[str]:
    """Every document of the toc tree, depth first, in toc order."""
    seen: list[str] = []

    def walk(doc: str) -> None:
        if doc in seen:
            return
        seen.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return seen


def _entry(*children: nodes.Node) -> nodes.entry:
    entry = nodes.entry()
    para = nodes.paragraph()
    para.extend(children)
    entry += para
    return entry


def fill_chapter_tables(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    placeholders = list(doctree.findall(chapter_table))
    if not placeholders:
        return
    env, config = app.env, app.config
    chapters = [(d, s) for d in _toc_order(env) if (s := _chapter_stem(config, d)) is not None]
    for placeholder in placeholders:
        if not chapters:
            logger.warning("mmbook: no chapters under %s in the toc", config.mmbook_executed_dir, location=placeholder)
            placeholder.replace_self(nodes.paragraph(text="No chapters yet."))
            continue
        table = nodes.table(classes=placeholder["classes"])
        tgroup = nodes.tgroup(cols=3)
        table += tgroup
        for width in (60, 25, 15):
            tgroup += nodes.colspec(colwidth=width)
        head = nodes.thead()
        tgroup += head
        row = nodes.row()
        for label in ("Chapter", "Source notebook", "Colab"):
            row += _entry(nodes.Text(label))
        head += row
        body = nodes.tbody()
        tgroup += body
        for doc, stem in chapters:
            title = env.titles[doc].astext() if doc in env.titles else stem
            try:
                uri = app.builder.get_relative_uri(docname, doc)
            except Exception:  # builders without links (e.g. linkcheck)
                uri = ""
            row = nodes.row()
            row += _entry(nodes.reference("", title, refuri=uri, internal=True) if uri else nodes.Text(title))
            row += _entry(nodes.reference("", "", nodes.literal(text=f"{stem}.ipynb"), refuri=source_url(config, stem)))
            row += _entry(_badge(config, stem))
            body += row
        placeholder.replace_self(table)


# --------------------------------------------------------------------------- badge on chapter pages
def add_chapter_badge(app: Sphinx, doctree: nodes.document) -> None:
    stem = _chapter_stem(app.config, app.env.docname)
    if stem is None:
        return
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not section.children or not isinstance(section[0], nodes.title):
        logger.warning("mmbook: chapter %s has no title (a '# ...' heading in its first cell)", stem)
        return
    para = nodes.paragraph(classes=["mmbook-chapter-links"])
    para += _badge(app.config, stem)
    section.insert(1, para)


def check_config(app: Sphinx, config) -> None:
    _repo(config)  # fail early, with a clear message, on a bad repository URL


def setup(app: Sphinx) -> dict:
    app.add_config_value("mmbook_notebooks_dir", "notebooks", "env")
    app.add_config_value("mmbook_executed_dir", posixpath.join("notebooks", "_executed"), "env")
    app.add_role("colab", colab_role)
    app.add_node(chapter_table)
    app.add_directive("chapter-table", ChapterTable)
    app.connect("config-inited", check_config)
    app.connect("doctree-read", add_chapter_badge)
    app.connect("doctree-resolved", fill_chapter_tables)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
