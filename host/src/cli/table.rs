//! The table `vista tail` draws: rows in the view's own order, cut to the
//! terminal's width and height. Apart from the socket loop in [`super`]
//! because it is pure (rows in, lines out) and tested as such.

use serde_json::Value;

use crate::ids::Seq;

/// (columns, rows) to draw in: `COLUMNS`/`LINES`, else the terminal's size,
/// else 120 columns and no row limit when standard output is not a terminal.
pub fn terminal_size(terminal: bool) -> (usize, Option<usize>) {
    let env = |name| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize.
    let asked =
        terminal && unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    let (columns, rows) = if asked {
        (
            (size.ws_col > 0).then_some(size.ws_col as usize),
            (size.ws_row > 0).then_some(size.ws_row as usize),
        )
    } else {
        (None, None)
    };
    (
        env("COLUMNS").or(columns).unwrap_or(120).max(10),
        env("LINES").or(rows).filter(|_| terminal),
    )
}

/// The rows `vista tail` holds and the view's order.
#[derive(Default)]
pub struct Table {
    /// Entities by key.
    pub rows: std::collections::BTreeMap<String, Value>,
    /// The view's sort (dot path, descending); `None`: by key.
    pub sort: Option<(String, bool)>,
}

/// Longest a column gets before the terminal's width is considered: one
/// long value (a token's 50 recent trades) must not push every other
/// column off the screen.
const MAX_COLUMN: usize = 40;

impl Table {
    /// The rows in the view's order: the sort field's value (as the host
    /// orders it), reversed for descending, ties by key ascending.
    pub fn ordered(&self) -> Vec<(&String, &Value)> {
        use vista_plugin_api::view::SortValue;
        let mut rows: Vec<_> = self.rows.iter().collect();
        if let Some((field, descending)) = &self.sort {
            rows.sort_by(|(key_a, a), (key_b, b)| {
                let order = SortValue::of(a, field).cmp(&SortValue::of(b, field));
                let order = if *descending { order.reverse() } else { order };
                order.then_with(|| key_a.cmp(key_b))
            });
        }
        rows
    }

    /// The table as lines at most `width` characters wide: a title, a
    /// header, then the rows (at most `max_rows` lines in all, the rest
    /// counted), each cell cut with `…` to its column.
    pub fn render(
        &self,
        view: &str,
        columns: Option<&[String]>,
        width: usize,
        max_rows: Option<usize>,
    ) -> Vec<String> {
        let rows = self.ordered();
        let columns: Vec<String> = match columns {
            Some(chosen) => chosen.to_vec(),
            None => {
                let mut names = vec![Seq::FIELD.to_owned()];
                for (_, entity) in &rows {
                    for name in entity.as_object().into_iter().flatten().map(|(k, _)| k) {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                }
                names
            }
        };
        let cell = |value: Option<&Value>| -> String {
            let text = match value {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            text.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let mut grid: Vec<Vec<String>> = vec![std::iter::once("key".to_owned())
            .chain(columns.iter().cloned())
            .collect()];
        for (key, entity) in &rows {
            grid.push(
                std::iter::once((*key).clone())
                    .chain(columns.iter().map(|c| {
                        match (c.as_str(), entity.get(c)) {
                            // `_seq` is zero-padded for text order; its number
                            // is what a reader compares.
                            (Seq::FIELD, Some(Value::String(seq))) => seq
                                .parse::<Seq>()
                                .map_or_else(|_| cell(entity.get(c)), |seq| seq.0.to_string()),
                            (_, value) => cell(value),
                        }
                    }))
                    .collect(),
            );
        }
        let mut widths: Vec<usize> = (0..grid[0].len())
            .map(|i| {
                grid.iter()
                    .map(|row| row[i].chars().count())
                    .max()
                    .unwrap_or(0)
                    .min(MAX_COLUMN)
            })
            .collect();
        // Narrow the widest column until the row fits; past a readable
        // minimum, drop columns from the right instead.
        let total =
            |widths: &[usize]| widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        while total(&widths) > width {
            let (widest, &most) = widths
                .iter()
                .enumerate()
                .max_by_key(|(i, w)| (**w, std::cmp::Reverse(*i)))
                .expect("the key column");
            if most > 8 {
                widths[widest] -= 1;
            } else if widths.len() > 1 {
                widths.pop();
            } else {
                break;
            }
        }
        let order = match &self.sort {
            Some((field, true)) => format!(", by {field} descending"),
            Some((field, false)) => format!(", by {field}"),
            None => ", by key".to_owned(),
        };
        let mut lines = vec![cut(&format!("{view}: {} rows{order}", rows.len()), width)];
        let budget = max_rows.map(|m| m.saturating_sub(2).max(1));
        let shown = budget.map_or(grid.len(), |b| grid.len().min(b + 1));
        for row in &grid[..shown] {
            let line: Vec<String> = widths
                .iter()
                .zip(row)
                .map(|(w, text)| pad(&cut(text, *w), *w))
                .collect();
            lines.push(line.join("  ").trim_end().to_owned());
        }
        if shown < grid.len() {
            lines.push(format!("… {} more", grid.len() - shown));
        }
        lines
    }
}

/// `text` in at most `width` characters, ending in `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut kept: String = text.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// `text` padded with spaces to `width` characters.
fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}
