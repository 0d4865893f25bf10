/**
 * The demo's HTML report: plain inline SVG (no chart library, no script, opens anywhere) with
 * memory by category over time and KV block occupancy over time, from the engine's step records.
 */
import { MEMORY_CATEGORIES, type MemoryCategory } from './memory';
import { type EngineStep } from './engine';

export interface ReportInput {
  title: string;
  steps: readonly EngineStep[];
  /** Preformatted summary lines (the plan, the totals). */
  summary: readonly string[];
}

const COLORS: Record<MemoryCategory, string> = {
  weights: '#4e79a7', 'kv-cache': '#f28e2b', activations: '#59a14f', workspace: '#e15759', other: '#9c755f',
};

function escape(text: string): string {
  return text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

interface Series {
  label: string;
  color: string;
  values: number[];
}

/** A chart of series over `times` (ms): stacked areas or lines, with axes and a legend. */
function chart(title: string, unit: string, times: number[], series: Series[], stacked: boolean): string {
  const W = 760, H = 260, left = 64, right = 16, top = 28, bottom = 36;
  const n = times.length;
  const tMax = Math.max(1, times[n - 1] ?? 1);
  const tops = times.map((_, i) => (stacked ? series.reduce((a, s) => a + s.values[i]!, 0) : Math.max(...series.map((s) => s.values[i]!))));
  const yMax = Math.max(1e-9, ...tops) * 1.08;
  const x = (t: number): number => left + ((W - left - right) * t) / tMax;
  const y = (v: number): number => H - bottom - ((H - top - bottom) * v) / yMax;
  const parts: string[] = [`<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escape(title)}">`];
  parts.push(`<text x="${left}" y="18" font-size="14" font-weight="600">${escape(title)}</text>`);
  for (let k = 0; k <= 4; k++) {
    const v = (yMax / 1.08) * (k / 4);
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${y(v) + 4}" font-size="11" text-anchor="end">${v >= 100 ? v.toFixed(0) : v.toFixed(1)}</text>`);
  }
  parts.push(`<text x="14" y="${top + (H - top - bottom) / 2}" font-size="11" transform="rotate(-90 14 ${top + (H - top - bottom) / 2})" text-anchor="middle">${escape(unit)}</text>`);
  for (let k = 0; k <= 5; k++) {
    const t = (tMax * k) / 5;
    parts.push(`<text x="${x(t)}" y="${H - bottom + 16}" font-size="11" text-anchor="middle">${(t / 1000).toFixed(2)} s</text>`);
  }
  const base = new Array<number>(n).fill(0);
  for (const s of series) {
    if (n === 0) break;
    if (stacked) {
      const upper = s.values.map((v, i) => base[i]! + v);
      const pts = upper.map((v, i) => `${x(times[i]!).toFixed(1)},${y(v).toFixed(1)}`);
      const back = base.map((v, i) => `${x(times[i]!).toFixed(1)},${y(v).toFixed(1)}`).reverse();
      parts.push(`<polygon points="${[...pts, ...back].join(' ')}" fill="${s.color}" fill-opacity="0.75" stroke="none"/>`);
      upper.forEach((v, i) => (base[i] = v));
    } else {
      parts.push(`<polyline points="${s.values.map((v, i) => `${x(times[i]!).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}" fill="none" stroke="${s.color}" stroke-width="1.8"/>`);
    }
  }
  series.forEach((s, k) => {
    const lx = left + 10 + k * 140;
    parts.push(`<rect x="${lx}" y="${H - 12}" width="10" height="10" fill="${s.color}"/><text x="${lx + 14}" y="${H - 3}" font-size="11">${escape(s.label)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

export function renderReport(input: ReportInput): string {
  const steps = input.steps;
  const times = steps.map((s) => s.time - (steps[0]?.time ?? 0));
  const MiB = 2 ** 20;
  const memory = MEMORY_CATEGORIES.filter((c) => steps.some((s) => s.memory[c] > 0)).map((c) => ({
    label: c, color: COLORS[c], values: steps.map((s) => s.memory[c] / MiB),
  }));
  const kv: Series[] = [
    { label: 'used blocks', color: '#f28e2b', values: steps.map((s) => s.kv.usedBlocks) },
    { label: 'cached blocks', color: '#76b7b2', values: steps.map((s) => s.kv.cachedBlocks) },
    { label: 'total blocks', color: '#bab0ac', values: steps.map((s) => s.kv.totalBlocks) },
  ];
  const queues: Series[] = [
    { label: 'running', color: '#59a14f', values: steps.map((s) => s.running) },
    { label: 'waiting', color: '#e15759', values: steps.map((s) => s.waiting) },
    { label: 'swapped', color: '#af7aa1', values: steps.map((s) => s.swapped) },
    { label: 'tokens / step', color: '#4e79a7', values: steps.map((s) => s.prefillTokens + s.decodeTokens) },
  ];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(input.title)}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}pre{background:#f6f6f6;padding:12px;overflow-x:auto}svg{display:block;margin:16px 0}</style>
</head><body>
<h1>${escape(input.title)}</h1>
<pre>${escape(input.summary.join('\n'))}</pre>
${chart('Memory by category (device)', 'MiB', times, memory, true)}
${chart('KV cache blocks', 'blocks', times, kv, false)}
${chart('Scheduler: sequences and batch size', 'count', times, queues, false)}
<p>${steps.length} engine steps.</p>
</body></html>
`;
}
