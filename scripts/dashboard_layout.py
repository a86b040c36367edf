"""Draws the layout of a Datadog dashboard definition (ordered layout, 12-column grid) as a PNG.

The picture shows what the JSON defines and nothing else: the template variables, each group with its title, and
each widget at its grid position with its title, its type and the first query or check it shows. It draws no data:
it is a map of the dashboard, not a screenshot of it.

Usage: python scripts/dashboard_layout.py [DASHBOARD_JSON] [OUTPUT_PNG]
  defaults: assets/dashboards/huntress_overview.json images/huntress_overview_layout.png
Needs Pillow (not a project dependency: `pip install pillow` in any virtualenv) and the DejaVu fonts, or falls
back to Pillow's built-in font.
"""

import json
import os
import sys

from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = 12
UNIT_X = 104  # pixels per grid column
UNIT_Y = 52  # pixels per grid row
MARGIN = 24
GAP = 6
HEADER = 92  # dashboard title and template variables

BACKGROUND = (246, 247, 250)
GROUP_FILL = (232, 235, 242)
GROUP_TITLE = (60, 50, 110)
WIDGET_FILL = (255, 255, 255)
WIDGET_EDGE = (200, 204, 214)
NOTE_FILL = (226, 238, 252)
TEXT = (40, 42, 52)
MUTED = (120, 124, 138)
TYPE_COLOURS = {
    'timeseries': (99, 44, 166),
    'query_value': (0, 122, 94),
    'toplist': (178, 86, 0),
    'list_stream': (40, 96, 168),
    'check_status': (160, 30, 60),
    'note': (90, 90, 90),
}
TYPE_LABELS = {
    'timeseries': 'timeseries',
    'query_value': 'query value',
    'toplist': 'top list',
    'list_stream': 'log stream',
    'check_status': 'check status',
    'note': 'note',
}


def font(size, bold=False):
    name = 'DejaVuSans-Bold.ttf' if bold else 'DejaVuSans.ttf'
    for folder in ('/usr/share/fonts/truetype/dejavu', '/usr/share/fonts/dejavu', '/Library/Fonts'):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def first_query(definition):
    """The first metric, log or check query of a widget, as the JSON spells it."""
    if definition['type'] == 'check_status':
        return 'check: ' + definition['check']
    if definition['type'] == 'note':
        lines = [plain(line) for line in definition.get('content', '').splitlines() if line.strip()]
        return ' '.join(lines[1:])
    for request in definition.get('requests', []):
        query = request.get('query')
        if isinstance(query, dict):
            return query.get('query_string', '')
        for item in request.get('queries', []):
            if 'query' in item:
                return item['query']
            if 'search' in item:
                return item['search'].get('query', '')
    return ''


def fit(draw, text, face, width):
    """`text` cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=face) <= width:
        return text
    while text and draw.textlength(text + '...', font=face) > width:
        text = text[:-1]
    return text + '...'


def wrap(draw, text, face, width, lines):
    """`text` over at most `lines` lines of `width` pixels, broken between characters (queries have long words)."""
    out = []
    rest = text
    while rest and len(out) < lines:
        n = len(rest)
        while n > 1 and draw.textlength(rest[:n], font=face) > width:
            n -= 1
        out.append(rest[:n])
        rest = rest[n:]
    if rest and out:
        out[-1] = fit(draw, out[-1] + rest, face, width)
    return out


def plain(text):
    """Markdown text of a note without its emphasis and code marks."""
    return text.replace('**', '').replace('`', '').strip('# -')


def draw_widget(draw, widget, left, top, faces):
    definition = widget['definition']
    layout = widget['layout']
    x0 = left + layout['x'] * UNIT_X + GAP / 2
    y0 = top + layout['y'] * UNIT_Y + GAP / 2
    x1 = x0 + layout['width'] * UNIT_X - GAP
    y1 = y0 + layout['height'] * UNIT_Y - GAP
    kind = definition['type']
    draw.rounded_rectangle((x0, y0, x1, y1), radius=6, fill=NOTE_FILL if kind == 'note' else WIDGET_FILL, outline=WIDGET_EDGE)
    inner = x1 - x0 - 20
    colour = TYPE_COLOURS.get(kind, MUTED)
    draw.rectangle((x0, y0 + 6, x0 + 4, y1 - 6), fill=colour)
    title = definition.get('title') or plain((definition.get('content', '').splitlines() or [''])[0])
    draw.text((x0 + 12, y0 + 8), fit(draw, title, faces['title'], inner), font=faces['title'], fill=TEXT)
    draw.text((x0 + 12, y0 + 30), TYPE_LABELS.get(kind, kind), font=faces['type'], fill=colour)
    query = first_query(definition)
    room = int((y1 - y0 - 56) // 16)
    for n, line in enumerate(wrap(draw, query, faces['query'], inner, max(room, 0))):
        draw.text((x0 + 12, y0 + 50 + n * 16), line, font=faces['query'], fill=MUTED)


def render(dashboard, out_path):
    groups = dashboard['widgets']
    rows = max(w['layout']['y'] + w['layout']['height'] for w in groups)
    width = MARGIN * 2 + COLUMNS * UNIT_X
    height = HEADER + rows * UNIT_Y + MARGIN
    image = Image.new('RGB', (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    faces = {
        'dashboard': font(26, bold=True),
        'vars': font(14),
        'group': font(17, bold=True),
        'title': font(14, bold=True),
        'type': font(12),
        'query': font(11),
    }
    draw.text((MARGIN, 18), dashboard['title'], font=faces['dashboard'], fill=TEXT)
    variables = '   '.join(f"${v['name']}: {v.get('default', '*')}" for v in dashboard.get('template_variables', []))
    caption = 'Layout drawn from the dashboard definition: widget titles, types and queries, no data.'
    draw.text((MARGIN, 54), variables, font=faces['vars'], fill=MUTED)
    draw.text((width - MARGIN - draw.textlength(caption, font=faces['vars']), 54), caption, font=faces['vars'], fill=MUTED)
    for group in groups:
        layout = group['layout']
        definition = group['definition']
        x0 = MARGIN + layout['x'] * UNIT_X
        y0 = HEADER + layout['y'] * UNIT_Y
        x1 = x0 + layout['width'] * UNIT_X
        y1 = y0 + layout['height'] * UNIT_Y - GAP
        if definition['type'] != 'group':
            draw_widget(draw, group, MARGIN, HEADER, faces)
            continue
        draw.rounded_rectangle((x0, y0, x1, y1), radius=8, fill=GROUP_FILL)
        draw.text((x0 + 12, y0 + 14), definition.get('title', ''), font=faces['group'], fill=GROUP_TITLE)
        for widget in definition['widgets']:
            draw_widget(draw, widget, x0, y0 + UNIT_Y, faces)  # a group's title takes its first row
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    image.save(out_path, optimize=True)


def main(argv):
    source = argv[1] if len(argv) > 1 else os.path.join(ROOT, 'assets', 'dashboards', 'huntress_overview.json')
    out = argv[2] if len(argv) > 2 else os.path.join(ROOT, 'images', 'huntress_overview_layout.png')
    with open(source, encoding='utf-8') as f:
        render(json.load(f), out)
    print(out)


if __name__ == '__main__':
    main(sys.argv)
