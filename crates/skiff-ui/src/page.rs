//! What every dashboard page is made of: headline cards, then sections that each hold
//! charts (SVG, drawn on the server) and a table. One template renders them all, so every
//! view looks and navigates alike, and every table reads without JavaScript.

use askama::Template;

/// The time range a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last 15 minutes.
    M15,
    /// The last hour.
    H1,
    /// The last 6 hours.
    H6,
    /// The last day.
    H24,
    /// The last week.
    D7,
    /// The last 30 days.
    D30,
}

impl Range {
    /// Every range, shortest first.
    pub const ALL: [Range; 6] = [
        Range::M15,
        Range::H1,
        Range::H6,
        Range::H24,
        Range::D7,
        Range::D30,
    ];

    /// The range a `range=` query parameter names; the default (1 h) for none.
    pub fn parse(s: Option<&str>) -> Option<Range> {
        match s.unwrap_or("1h") {
            "15m" => Some(Range::M15),
            "1h" => Some(Range::H1),
            "6h" => Some(Range::H6),
            "24h" => Some(Range::H24),
            "7d" => Some(Range::D7),
            "30d" => Some(Range::D30),
            _ => None,
        }
    }

    /// As a query parameter.
    pub fn param(self) -> &'static str {
        match self {
            Range::M15 => "15m",
            Range::H1 => "1h",
            Range::H6 => "6h",
            Range::H24 => "24h",
            Range::D7 => "7d",
            Range::D30 => "30d",
        }
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Range::M15 => "last 15 minutes",
            Range::H1 => "last hour",
            Range::H6 => "last 6 hours",
            Range::H24 => "last 24 hours",
            Range::D7 => "last 7 days",
            Range::D30 => "last 30 days",
        }
    }

    /// Its length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Range::M15 => 15 * 60,
            Range::H1 => 3600,
            Range::H6 => 6 * 3600,
            Range::H24 => 24 * 3600,
            Range::D7 => 7 * 24 * 3600,
            Range::D30 => 30 * 24 * 3600,
        }
    }

    /// Seconds per chart point: at most 180 points, and never finer than the history keeps
    /// (10 s for a day, 5 min beyond).
    pub fn step(self) -> i64 {
        match self {
            Range::M15 => 10,
            Range::H1 => 20,
            Range::H6 => 120,
            Range::H24 => 600,
            Range::D7 => 3600,
            Range::D30 => 4 * 3600,
        }
    }

    /// Seconds per bar of a cost trend: an hour for ranges up to a day, else a day.
    pub fn cost_step(self) -> i64 {
        if self.seconds() <= 24 * 3600 {
            3600
        } else {
            24 * 3600
        }
    }
}

/// The three views, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Success, cost, budgets, failing Services.
    Executive,
    /// SLIs against SLOs, alerts, instances, deployments.
    OnCall,
    /// One Service and revision in depth.
    Debug,
}

/// How a figure reads: good, a warning, bad, or plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    /// Plain.
    #[default]
    Plain,
    /// Within its objective.
    Good,
    /// Close to it.
    Warn,
    /// Beyond it.
    Bad,
}

impl Tone {
    /// The CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Tone::Plain => "",
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
        }
    }
}

/// A headline figure.
#[derive(Debug, Clone)]
pub struct Card {
    /// Its id in the page (`data-card`), for tests and links.
    pub id: &'static str,
    /// What it is.
    pub label: String,
    /// The figure.
    pub value: String,
    /// A line under it.
    pub detail: String,
    /// How it reads.
    pub tone: Tone,
}

/// A table cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// The text.
    pub text: String,
    /// A link.
    pub href: Option<String>,
    /// How it reads.
    pub tone: Tone,
    /// A meter under the text, 0..=1.
    pub meter: Option<f64>,
    /// Monospaced (ids, log lines).
    pub mono: bool,
}

impl Cell {
    /// A plain cell.
    pub fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            ..Cell::default()
        }
    }

    /// A link.
    pub fn link(text: impl Into<String>, href: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            href: Some(href.into()),
            ..Cell::default()
        }
    }

    /// With a tone.
    pub fn tone(mut self, tone: Tone) -> Cell {
        self.tone = tone;
        self
    }

    /// With a meter.
    pub fn meter(mut self, share: f64) -> Cell {
        self.meter = share.is_finite().then_some(share.clamp(0.0, 1.0));
        self
    }

    /// Monospaced.
    pub fn mono(mut self) -> Cell {
        self.mono = true;
        self
    }

    /// The cell's CSS classes.
    pub fn class(&self) -> String {
        let mut c = self.tone.class().to_owned();
        if self.mono {
            if !c.is_empty() {
                c.push(' ');
            }
            c.push_str("mono");
        }
        c
    }
}

/// A table: a header row and rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column headings.
    pub headers: Vec<String>,
    /// Rows; each has a key (`data-key`, e.g. `default/hello`) for tests and links.
    pub rows: Vec<(String, Vec<Cell>)>,
    /// What to say when there are no rows.
    pub empty: String,
}

impl Table {
    /// A table with these headings, and what to say with no rows.
    pub fn new(headers: &[&str], empty: impl Into<String>) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            empty: empty.into(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, key: impl Into<String>, cells: Vec<Cell>) {
        self.rows.push((key.into(), cells));
    }
}

/// A part of a page.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Its id in the page (an anchor).
    pub id: String,
    /// Its heading.
    pub heading: String,
    /// A line under the heading.
    pub note: Option<String>,
    /// Charts, as SVG.
    pub charts: Vec<String>,
    /// A table.
    pub table: Option<Table>,
}

impl Section {
    /// A section holding only a table.
    pub fn of_table(id: &str, heading: &str, note: Option<String>, table: Table) -> Section {
        Section {
            id: id.to_owned(),
            heading: heading.to_owned(),
            note,
            charts: Vec::new(),
            table: Some(table),
        }
    }
}

/// A page of the dashboard.
#[derive(Debug, Clone, Template)]
#[template(path = "page.html")]
pub struct Page {
    /// Its title.
    pub title: String,
    /// Which view it belongs to.
    pub view: View,
    /// The range it shows.
    pub range: Range,
    /// Query parameters the range picker keeps (the revision shown).
    pub keep: Vec<(String, String)>,
    /// When it was made (RFC 3339, UTC).
    pub now: String,
    /// Links above the cards (e.g. the revisions of a Service), `(text, href, current)`.
    pub tabs: Vec<(String, String, bool)>,
    /// Headline figures.
    pub cards: Vec<Card>,
    /// Its sections.
    pub sections: Vec<Section>,
    /// Seconds between live updates (0: none).
    pub live_seconds: u32,
}

impl Page {
    /// A page of `view` titled `title`, over `range`, made at `now`.
    pub fn new(view: View, title: impl Into<String>, range: Range, now: impl Into<String>) -> Page {
        Page {
            title: title.into(),
            view,
            range,
            keep: Vec::new(),
            now: now.into(),
            tabs: Vec::new(),
            cards: Vec::new(),
            sections: Vec::new(),
            live_seconds: 5,
        }
    }

    fn nav(&self) -> [(&'static str, &'static str, bool); 3] {
        [
            ("Executive", "/ui/", self.view == View::Executive),
            ("On-call", "/ui/oncall", self.view == View::OnCall),
            ("Debug", "/ui/debug", self.view == View::Debug),
        ]
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    fn ranges(&self) -> Vec<(&'static str, &'static str, bool)> {
        Range::ALL
            .iter()
            .map(|r| (r.param(), r.label(), *r == self.range))
            .collect()
    }
}

/// The page a browser without a session gets (401), or a refused login.
#[derive(Debug, Clone, Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Why it is shown.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_escapes_what_it_is_given_and_keeps_svg_as_is() {
        let mut p = Page::new(View::OnCall, "On-call", Range::H1, "2026-12-05T00:00:00Z");
        p.cards.push(Card {
            id: "success",
            label: "Success".into(),
            value: "<b>99%</b>".into(),
            detail: String::new(),
            tone: Tone::Good,
        });
        let mut t = Table::new(&["Service"], "No Services.");
        t.row("default/x", vec![Cell::link("<script>", "/ui/x?a=1&b=2")]);
        p.sections.push(Section {
            id: "s".into(),
            heading: "S".into(),
            charts: vec!["<svg role=\"img\"></svg>".into()],
            table: Some(t),
            ..Section::default()
        });
        let html = p.render().expect("renders");
        assert!(
            html.contains("&#60;b&#62;99%&#60;/b&#62;") || html.contains("&lt;b&gt;99%"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("<svg role=\"img\"></svg>"));
        assert!(html.contains("aria-current=\"page\""));
        assert!(html.contains("data-key=\"default/x\""));
    }

    #[test]
    fn an_empty_table_says_so() {
        let mut p = Page::new(View::Executive, "Executive", Range::D7, "now");
        p.sections.push(Section {
            id: "t".into(),
            heading: "T".into(),
            table: Some(Table::new(&["A"], "Nothing failed in this range.")),
            ..Section::default()
        });
        let html = p.render().expect("renders");
        assert!(html.contains("Nothing failed in this range."));
        assert!(html.contains("value=\"7d\" selected"), "{html}");
    }

    #[test]
    fn ranges_round_trip_and_fit_the_history() {
        for r in Range::ALL {
            assert_eq!(Range::parse(Some(r.param())), Some(r));
            assert!(r.seconds() / r.step() <= 180, "{r:?}");
            assert_eq!(r.step() % 10, 0);
        }
        assert_eq!(Range::parse(None), Some(Range::H1));
        assert_eq!(Range::parse(Some("2y")), None);
    }
}
