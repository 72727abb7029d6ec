// A virtualised table: only the rows in (or near) the viewport exist as
// elements, positioned over a spacer as tall as every row together. It
// renders at most once per animation frame however many updates arrive,
// and then only touches cells whose text changed, so a view of 100,000
// entities updating hundreds of times a second costs a few dozen cell
// writes per frame.

const OVERSCAN = 8;

export class VirtualTable {
  /**
   * @param {HTMLElement} root an empty element; the table is built inside
   * @param {object} source `count()`, `row(i)` -> {key, cells: string[], fresh: bool}
   *   and `columns()` -> string[] (header labels; changes are picked up on render)
   * @param {number} rowHeight in pixels, fixed (CSS must agree)
   */
  constructor(root, source, rowHeight = 24) {
    this.source = source;
    this.rowHeight = rowHeight;
    this.header = document.createElement('div');
    this.header.className = 'vt-header';
    this.viewport = document.createElement('div');
    this.viewport.className = 'vt-viewport';
    this.spacer = document.createElement('div');
    this.spacer.className = 'vt-spacer';
    this.viewport.append(this.spacer);
    root.append(this.header, this.viewport);
    this.pool = [];
    this.columnKey = '';
    this.scheduled = false;
    this.viewport.addEventListener('scroll', () => this.invalidate(), { passive: true });
    new ResizeObserver(() => this.invalidate()).observe(this.viewport);
  }

  /** Asks for a render on the next animation frame (coalesced). */
  invalidate() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  setColumns(columns) {
    const key = columns.join('\u0000');
    if (key === this.columnKey) return;
    this.columnKey = key;
    // key, then `_seq` (16 digits, never cut), then the fields.
    const width = (i) => ['minmax(8em, 1.2fr)', '17ch'][i] ?? 'minmax(6em, 1fr)';
    this.template = columns.map((_, i) => width(i)).join(' ');
    this.header.style.gridTemplateColumns = this.template;
    this.header.replaceChildren(
      ...columns.map((label) => {
        const cell = document.createElement('span');
        cell.textContent = label;
        return cell;
      }),
    );
    // Rows are rebuilt with the new column count.
    for (const row of this.pool) row.remove();
    this.pool = [];
  }

  makeRow(width) {
    const row = document.createElement('div');
    row.className = 'vt-row';
    row.style.gridTemplateColumns = this.template;
    row.style.height = `${this.rowHeight}px`;
    for (let c = 0; c < width; c++) row.append(document.createElement('span'));
    this.spacer.append(row);
    return row;
  }

  render() {
    const columns = this.source.columns();
    this.setColumns(columns);
    const count = this.source.count();
    this.spacer.style.height = `${count * this.rowHeight}px`;
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 400;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN);
    const last = Math.min(count, Math.ceil((top + height) / this.rowHeight) + OVERSCAN);
    while (this.pool.length < last - first) this.pool.push(this.makeRow(columns.length));
    for (let j = 0; j < this.pool.length; j++) {
      const row = this.pool[j];
      const i = first + j;
      if (i >= last) {
        if (!row.hidden) {
          row.hidden = true;
          row.removeAttribute('data-key');
        }
        continue;
      }
      const item = this.source.row(i);
      row.hidden = false;
      row.style.transform = `translateY(${i * this.rowHeight}px)`;
      if (row.dataset.key !== item.key) row.dataset.key = item.key;
      row.classList.toggle('fresh', item.fresh);
      const cells = row.children;
      for (let c = 0; c < cells.length; c++) {
        const text = item.cells[c] ?? '';
        if (cells[c].textContent !== text) {
          cells[c].textContent = text;
          cells[c].title = text;
        }
      }
    }
  }
}
