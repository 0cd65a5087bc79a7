-- clean_text(): the markup goes, the words and the code stay, on real files: the Python
-- documentation's reST source and HTML page for shutil (Debian's python3.11-doc, which
-- scripts/setup.sh installs) and git's README.md (Debian's git).
CREATE TEMP TABLE clean_text_files AS
SELECT format, clean_text(pg_read_file(path), format) AS cleaned
FROM (VALUES ('rst', '/usr/share/doc/python3.11/html/_sources/library/shutil.rst.txt'),
             ('html', '/usr/share/doc/python3.11/html/library/shutil.html'),
             ('markdown', '/usr/share/doc/git/README.md')) f(format, path);
SELECT format, length(cleaned) > 2000 AS long_enough FROM clean_text_files ORDER BY format;
-- reST: no literals, roles, emphasis, directives, comments or section adornments.
SELECT position('``' IN cleaned) = 0 AS no_literal_markup, cleaned !~ ':[a-z]+:`' AS no_roles,
       position('*src*' IN cleaned) = 0 AS no_emphasis, cleaned !~ '(^|\n)\s*\.\. ' AS no_directives,
       cleaned !~ '\n[-=~^]{4,}(\n|$)' AS no_adornments, cleaned !~ '::(\n|$)' AS no_literal_markers,
       position('copyfile(src, dst, *, follow_symlinks=True)' IN cleaned) > 0 AS signature_kept,
       position('Copy the contents (no metadata) of the file named src to a file named dst and return dst' IN cleaned) > 0
         AS paragraph_on_one_line,
       position('Changed in version 3.3: IOError used to be raised instead of OSError.' IN cleaned) > 0 AS version_note,
       position(E'from shutil import copytree, ignore_patterns\n' IN cleaned) > 0 AS code_kept
FROM clean_text_files WHERE format = 'rst';
-- HTML: no tags, entities, scripts or permalink marks; the same prose.
SELECT cleaned !~ '<[a-zA-Z/!]' AS no_tags, cleaned !~ '&[a-z]+;|&#[0-9]+;' AS no_entities,
       position('¶' IN cleaned) = 0 AS no_permalinks,
       position('Copy the contents (no metadata) of the file named src to a file named dst and return dst' IN cleaned) > 0
         AS paragraph_kept
FROM clean_text_files WHERE format = 'html';
-- Markdown: no links, images, headings' underlines or code-span backticks.
SELECT position('](' IN cleaned) = 0 AS no_links, position('[]' IN cleaned) = 0 AS no_reference_links,
       position('`' IN cleaned) = 0 AS no_code_spans, cleaned !~ '\n===' AS no_underlines,
       position('Git is a fast, scalable, distributed revision control system with an unusually rich command set' IN cleaned) > 0
         AS paragraph_on_one_line,
       position('Please read the file INSTALL for installation instructions.' IN cleaned) > 0 AS link_text_kept
FROM clean_text_files WHERE format = 'markdown';

SELECT clean_text(E'A *small* ``example``::\n\n    x = 1\n', 'rst');
SELECT clean_text('<p>Fish &amp; <b>chips</b></p><script>alert(1)</script>', 'html');
SELECT clean_text(E'# Title\n\nSome `code` and a [link](http://example.com).', 'markdown');
SELECT clean_text(NULL, 'rst') IS NULL AS strict;
SELECT clean_text('x', 'latex');
SELECT clean_text(repeat('x', 65 * 1024 * 1024), 'html');
