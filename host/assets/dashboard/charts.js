// Small time-series charts drawn by hand as SVG: one polyline per chart,
// the latest value in words, the maximum of the window as the scale.

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 240;
const HEIGHT = 56;

/** Formats a rate or count compactly: 950, 12.3k, 4.1M. */
export function compact(value) {
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  if (abs >= 100 || Number.isInteger(value)) return `${Math.round(value)}`;
  return value.toFixed(1);
}

/** Bytes per second: 512 B/s, 3.2 KiB/s, 1.5 MiB/s. */
export function bytesRate(value) {
  if (value >= 1 << 20) return `${(value / (1 << 20)).toFixed(1)} MiB/s`;
  if (value >= 1 << 10) return `${(value / (1 << 10)).toFixed(1)} KiB/s`;
  return `${Math.round(value)} B/s`;
}

export class Sparkline {
  /**
   * @param {HTMLElement} parent where the chart goes
   * @param {string} id the figure's name (data-figure attribute)
   * @param {string} label what it shows
   * @param {(v: number) => string} format the latest value in words
   * @param {number} points how many samples are kept (one a second)
   */
  constructor(parent, id, label, format, points = 120) {
    this.format = format;
    this.points = points;
    this.values = [];
    this.root = document.createElement('figure');
    this.root.className = 'chart';
    this.root.dataset.figure = id;
    const caption = document.createElement('figcaption');
    this.title = document.createElement('span');
    this.title.textContent = label;
    this.current = document.createElement('strong');
    this.current.className = 'value';
    this.current.textContent = '–';
    caption.append(this.title, this.current);
    this.svg = document.createElementNS(SVG, 'svg');
    this.svg.setAttribute('viewBox', `0 0 ${WIDTH} ${HEIGHT}`);
    this.svg.setAttribute('preserveAspectRatio', 'none');
    this.area = document.createElementNS(SVG, 'path');
    this.area.setAttribute('class', 'area');
    this.line = document.createElementNS(SVG, 'polyline');
    this.line.setAttribute('class', 'line');
    this.svg.append(this.area, this.line);
    this.root.append(caption, this.svg);
    parent.append(this.root);
  }

  push(value) {
    this.values.push(value);
    if (this.values.length > this.points) this.values.shift();
    this.current.textContent = this.format(value);
    this.root.dataset.value = String(value);
    this.draw();
  }

  draw() {
    const max = Math.max(1, ...this.values);
    const step = WIDTH / (this.points - 1);
    const offset = this.points - this.values.length;
    const xy = this.values.map((v, i) => {
      const x = (offset + i) * step;
      const y = HEIGHT - 2 - (v / max) * (HEIGHT - 4);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    this.line.setAttribute('points', xy.join(' '));
    if (xy.length > 1) {
      const first = (offset * step).toFixed(1);
      this.area.setAttribute('d', `M${first},${HEIGHT} L${xy.join(' L')} L${WIDTH},${HEIGHT} Z`);
    }
    this.svg.setAttribute('aria-label', `max ${this.format(max)}`);
  }
}
