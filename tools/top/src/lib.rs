//! Operator tools over running processes' HTTP endpoints: `salesflow tap` (see [`tap`])
//! and `salesflow top`.
//!
//! `salesflow top`: a live terminal view of one or more salesflow processes, built from
//! their `/metrics` only — per pipeline and component the events per second in and out,
//! errors and dead letters per second, how full its input channels are and how long a
//! batch takes it (a sink's write), and the Kafka consumer lag per partition.
//!
//! Rates are the difference of two scrapes over the time between them. `--once` prints
//! one frame as text after two scrapes (for scripts and logs); otherwise the view
//! refreshes every `--interval` until `q`, Esc or Ctrl-C.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

pub mod tap;

/// One scrape of one process: every series by name and labels.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub values: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    /// Parses the Prometheus / OpenMetrics text format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).map_err(|e| e.to_string())?;
        let mut values = HashMap::new();
        for sample in parsed.samples {
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                    continue;
                }
            };
            values.insert((sample.metric, labels), value);
        }
        Ok(Self { values })
    }

    /// The sum of a metric's series whose labels include `select`, grouped by the labels
    /// named in `by`.
    fn sum_by(&self, metric: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for ((name, labels), value) in &self.values {
            if name != metric {
                continue;
            }
            let key: Vec<String> = by
                .iter()
                .map(|b| {
                    labels
                        .iter()
                        .find(|(k, _)| k == b)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect();
            *out.entry(key).or_insert(0.0) += value;
        }
        out
    }
}

/// One component's row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub process: String,
    pub pipeline: String,
    pub component: String,
    pub kind: String,
    pub in_per_s: f64,
    pub out_per_s: f64,
    pub errors_per_s: f64,
    pub dead_per_s: f64,
    /// Batches waiting in its input channels, of their capacity.
    pub fill: f64,
    pub capacity: f64,
    /// Mean time per batch over the interval (a sink's write), if it handled any.
    pub batch_ms: Option<f64>,
}

/// One partition's lag.
#[derive(Clone, Debug, PartialEq)]
pub struct Lag {
    pub process: String,
    pub pipeline: String,
    pub component: String,
    pub topic: String,
    pub partition: String,
    pub lag: f64,
}

/// What one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub rows: Vec<Row>,
    pub lags: Vec<Lag>,
    /// Processes that did not answer, with why.
    pub down: Vec<(String, String)>,
}

const NODE: [&str; 4] = ["pipeline", "component", "kind", "plugin"];

fn rate(
    before: &BTreeMap<Vec<String>, f64>,
    after: &BTreeMap<Vec<String>, f64>,
    key: &[String],
    seconds: f64,
) -> f64 {
    let now = after.get(key).copied().unwrap_or(0.0);
    let then = before.get(key).copied().unwrap_or(0.0);
    if seconds <= 0.0 || now < then {
        // A restarted process: its counters began again.
        0.0
    } else {
        (now - then) / seconds
    }
}

/// The rows of one process from two of its scrapes `seconds` apart.
pub fn rows(process: &str, before: &Scrape, after: &Scrape, seconds: f64) -> (Vec<Row>, Vec<Lag>) {
    let series = |s: &Scrape, metric: &str, by: &[&str]| s.sum_by(metric, by);
    let node = &NODE[..];
    let two = &NODE[..2];
    let (in_a, in_b) = (
        series(before, "salesflow_events_in_total", node),
        series(after, "salesflow_events_in_total", node),
    );
    let (out_a, out_b) = (
        series(before, "salesflow_events_out_total", node),
        series(after, "salesflow_events_out_total", node),
    );
    let (err_a, err_b) = (
        series(before, "salesflow_errors_total", two),
        series(after, "salesflow_errors_total", two),
    );
    let (dead_a, dead_b) = (
        series(before, "salesflow_dead_lettered_events_total", two),
        series(after, "salesflow_dead_lettered_events_total", two),
    );
    let fill = series(after, "salesflow_channel_fill_batches", two);
    let capacity = series(after, "salesflow_channel_capacity_batches", two);
    let (sum_a, sum_b) = (
        series(before, "salesflow_processing_seconds_sum", two),
        series(after, "salesflow_processing_seconds_sum", two),
    );
    let (count_a, count_b) = (
        series(before, "salesflow_processing_seconds_count", two),
        series(after, "salesflow_processing_seconds_count", two),
    );
    // Every component that has any series (sources have events out only), with its kind.
    let mut nodes: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for key in in_b.keys().chain(out_b.keys()) {
        nodes.insert(key[..2].to_vec(), key[2].clone());
    }
    let per_node =
        |a: &BTreeMap<Vec<String>, f64>, b: &BTreeMap<Vec<String>, f64>, node: &[String]| {
            b.keys()
                .filter(|k| k[..2] == node[..])
                .map(|k| rate(a, b, k, seconds))
                .fold(0.0, |sum, r| sum + r)
        };
    let mut out = Vec::new();
    for (key, kind) in nodes {
        let events_in = per_node(&in_a, &in_b, &key);
        let batches =
            count_b.get(&key).copied().unwrap_or(0.0) - count_a.get(&key).copied().unwrap_or(0.0);
        let spent =
            sum_b.get(&key).copied().unwrap_or(0.0) - sum_a.get(&key).copied().unwrap_or(0.0);
        out.push(Row {
            process: process.to_owned(),
            pipeline: key[0].clone(),
            component: key[1].clone(),
            kind,
            in_per_s: events_in,
            out_per_s: per_node(&out_a, &out_b, &key),
            errors_per_s: rate(&err_a, &err_b, &key, seconds),
            dead_per_s: rate(&dead_a, &dead_b, &key, seconds),
            fill: fill.get(&key).copied().unwrap_or(0.0),
            capacity: capacity.get(&key).copied().unwrap_or(0.0),
            batch_ms: (batches > 0.0).then(|| spent / batches * 1000.0),
        });
    }
    let mut lags = series(
        after,
        "salesflow_kafka_consumer_lag",
        &["pipeline", "component", "topic", "partition"],
    )
    .into_iter()
    .map(|(k, lag)| Lag {
        process: process.to_owned(),
        pipeline: k[0].clone(),
        component: k[1].clone(),
        topic: k[2].clone(),
        partition: k[3].clone(),
        lag,
    })
    .collect::<Vec<_>>();
    // Partitions in numeric order.
    lags.sort_by_key(|l| {
        (
            l.pipeline.clone(),
            l.component.clone(),
            l.topic.clone(),
            l.partition.parse::<i64>().unwrap_or(i64::MAX),
        )
    });
    (out, lags)
}

/// Renders a frame as plain text (`--once`).
pub fn text(frame: &Frame) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<14} {:<16} {:<6} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "PROCESS",
        "PIPELINE",
        "COMPONENT",
        "KIND",
        "IN/s",
        "OUT/s",
        "ERR/s",
        "DEAD/s",
        "FILL",
        "BATCH ms"
    );
    for r in &frame.rows {
        let _ = writeln!(
            out,
            "{:<22} {:<14} {:<16} {:<6} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>9} {:>9}",
            r.process,
            r.pipeline,
            r.component,
            r.kind,
            r.in_per_s,
            r.out_per_s,
            r.errors_per_s,
            r.dead_per_s,
            fill_text(r),
            r.batch_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
        );
    }
    if !frame.lags.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<22} {:<14} {:<16} {:<24} {:>9} {:>10}",
            "PROCESS", "PIPELINE", "SOURCE", "TOPIC", "PARTITION", "LAG"
        );
        for l in &frame.lags {
            let _ = writeln!(
                out,
                "{:<22} {:<14} {:<16} {:<24} {:>9} {:>10}",
                l.process, l.pipeline, l.component, l.topic, l.partition, l.lag
            );
        }
    }
    for (process, why) in &frame.down {
        let _ = write!(out, "\n{process}: not answering: {why}\n");
    }
    out
}

fn fill_text(r: &Row) -> String {
    if r.capacity > 0.0 {
        format!("{}/{}", r.fill, r.capacity)
    } else {
        "-".to_owned()
    }
}

#[derive(Parser, Debug)]
#[command(
    about = "A live view of salesflow processes: per component events/s in and out, errors, dead letters, channel fill, batch time; Kafka lag per partition",
    after_help = "Examples:\n  \
                  salesflow top\n  \
                  salesflow top --target http://127.0.0.1:8080,http://127.0.0.1:8081\n  \
                  salesflow top --once --interval 2s      # one frame as text, then exit\n\n\
                  Keys: q or Esc quits."
)]
struct Cli {
    /// The processes' base URLs (their /metrics is read); comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    target: Vec<String>,
    /// Time between scrapes (the rates' window).
    #[arg(long, default_value = "1s", value_parser = humantime_serde::re::humantime::parse_duration)]
    interval: Duration,
    /// Print one frame as text (after two scrapes) and exit.
    #[arg(long)]
    once: bool,
}

/// Scrapes every target once.
async fn scrape_all(client: &reqwest::Client, targets: &[String]) -> Vec<Result<Scrape, String>> {
    let scrapes = targets.iter().map(|t| async move {
        let url = format!("{}/metrics", t.trim_end_matches('/'));
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        Scrape::parse(&text)
    });
    salesflow_plugin_api::futures::future::join_all(scrapes).await
}

fn process_name(target: &str) -> String {
    target
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

/// The frame from two rounds of scrapes.
fn frame(
    targets: &[String],
    before: &[Result<Scrape, String>],
    after: &[Result<Scrape, String>],
    seconds: f64,
) -> Frame {
    let mut frame = Frame::default();
    for (i, target) in targets.iter().enumerate() {
        let name = process_name(target);
        match (&before[i], &after[i]) {
            (Ok(a), Ok(b)) => {
                let (rows, lags) = rows(&name, a, b, seconds);
                frame.rows.extend(rows);
                frame.lags.extend(lags);
            }
            (_, Err(e)) | (Err(e), _) => frame.down.push((name, e.clone())),
        }
    }
    frame
}

async fn run(cli: Cli) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut before = scrape_all(&client, &cli.target).await;
    let mut at = Instant::now();
    if cli.once {
        tokio::time::sleep(cli.interval).await;
        let after = scrape_all(&client, &cli.target).await;
        let shown = frame(&cli.target, &before, &after, at.elapsed().as_secs_f64());
        print!("{}", text(&shown));
        return if shown.down.is_empty() {
            Ok(())
        } else {
            Err(format!("{} process(es) not answering", shown.down.len()))
        };
    }
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            // Wait for the interval, quitting on a key.
            let deadline = Instant::now() + cli.interval;
            while Instant::now() < deadline {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100));
                if crossterm::event::poll(wait).map_err(|e| e.to_string())?
                    && let crossterm::event::Event::Key(key) =
                        crossterm::event::read().map_err(|e| e.to_string())?
                {
                    use crossterm::event::{KeyCode, KeyModifiers};
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                tokio::task::yield_now().await;
            }
            let after = scrape_all(&client, &cli.target).await;
            let shown = frame(&cli.target, &before, &after, at.elapsed().as_secs_f64());
            before = after;
            at = Instant::now();
            terminal
                .draw(|f| draw(f, &shown, cli.interval))
                .map_err(|e| e.to_string())?;
        }
    }
    .await;
    ratatui::restore();
    result
}

fn draw(f: &mut ratatui::Frame<'_>, frame: &Frame, interval: Duration) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Cell, Row as TableRow, Table};
    let lag_height = u16::try_from(frame.lags.len().min(16) + 3).unwrap_or(19);
    let [top, bottom] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(lag_height)]).areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let header = TableRow::new(
        [
            "process",
            "pipeline",
            "component",
            "kind",
            "in/s",
            "out/s",
            "err/s",
            "dead/s",
            "fill",
            "batch ms",
        ]
        .map(Cell::from),
    )
    .style(bold);
    let rows = frame.rows.iter().map(|r| {
        TableRow::new(vec![
            Cell::from(r.process.clone()),
            Cell::from(r.pipeline.clone()),
            Cell::from(r.component.clone()),
            Cell::from(r.kind.clone()),
            Cell::from(format!("{:.1}", r.in_per_s)),
            Cell::from(format!("{:.1}", r.out_per_s)),
            Cell::from(format!("{:.2}", r.errors_per_s)),
            Cell::from(format!("{:.2}", r.dead_per_s)),
            Cell::from(fill_text(r)),
            Cell::from(
                r.batch_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
            ),
        ])
    });
    let widths = [
        Constraint::Length(22),
        Constraint::Length(14),
        Constraint::Length(16),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    let mut title = format!(" salesflow top — every {interval:?}; q quits ");
    for (process, why) in &frame.down {
        let _ = write!(title, "| {process} not answering: {why} ");
    }
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        top,
    );
    let header = TableRow::new(
        ["process", "pipeline", "source", "topic", "partition", "lag"].map(Cell::from),
    )
    .style(bold);
    let lags = frame.lags.iter().map(|l| {
        TableRow::new(vec![
            Cell::from(l.process.clone()),
            Cell::from(l.pipeline.clone()),
            Cell::from(l.component.clone()),
            Cell::from(l.topic.clone()),
            Cell::from(l.partition.clone()),
            Cell::from(format!("{}", l.lag)),
        ])
    });
    let widths = [
        Constraint::Length(22),
        Constraint::Length(14),
        Constraint::Length(16),
        Constraint::Length(24),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    f.render_widget(
        Table::new(lags, widths)
            .header(header)
            .block(Block::bordered().title(" Kafka consumer lag per partition ")),
        bottom,
    );
}

/// `salesflow top`.
pub struct TopCommand;

impl salesflow_plugin_api::Command for TopCommand {
    fn name(&self) -> &'static str {
        "top"
    }

    fn about(&self) -> &'static str {
        "A live view of running salesflow processes, from their /metrics: events/s, errors, dead letters, channel fill, batch time, Kafka lag"
    }

    fn needs_config(&self) -> bool {
        false
    }

    fn run(&self, args: &[String], _config: Option<&salesflow_plugin_api::ConfigView>) -> ExitCode {
        let cli = match salesflow_plugin_api::parse_args::<Cli>("salesflow top", args) {
            Ok(cli) => cli,
            Err(code) => return code,
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("salesflow top: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run(cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("salesflow top: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Adds `salesflow top` and `salesflow tap`.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.command(std::sync::Arc::new(TopCommand));
    registrar.command(std::sync::Arc::new(tap::TapCommand));
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE salesflow_events_in counter
salesflow_events_in_total{pipeline="p",component="batch",kind="stage",plugin="batch"} 100
salesflow_events_out_total{pipeline="p",component="in",kind="source",plugin="kafka"} 100
salesflow_events_out_total{pipeline="p",component="batch",kind="stage",plugin="batch"} 90
salesflow_processing_seconds_sum{pipeline="p",component="batch",kind="stage",plugin="batch"} 1.0
salesflow_processing_seconds_count{pipeline="p",component="batch",kind="stage",plugin="batch"} 10
salesflow_kafka_consumer_lag{pipeline="p",component="in",topic="orders",partition="0"} 5
# EOF
"#;

    const AFTER: &str = r#"# TYPE salesflow_events_in counter
salesflow_events_in_total{pipeline="p",component="batch",kind="stage",plugin="batch"} 300
salesflow_events_out_total{pipeline="p",component="in",kind="source",plugin="kafka"} 300
salesflow_events_out_total{pipeline="p",component="batch",kind="stage",plugin="batch"} 290
salesflow_errors_total{pipeline="p",component="batch",kind="stage",plugin="batch",error="x"} 4
salesflow_channel_fill_batches{pipeline="p",component="batch",kind="stage",plugin="batch",lane="0"} 1
salesflow_channel_fill_batches{pipeline="p",component="batch",kind="stage",plugin="batch",lane="1"} 2
salesflow_channel_capacity_batches{pipeline="p",component="batch",kind="stage",plugin="batch",lane="0"} 4
salesflow_channel_capacity_batches{pipeline="p",component="batch",kind="stage",plugin="batch",lane="1"} 4
salesflow_processing_seconds_sum{pipeline="p",component="batch",kind="stage",plugin="batch"} 1.5
salesflow_processing_seconds_count{pipeline="p",component="batch",kind="stage",plugin="batch"} 20
salesflow_kafka_consumer_lag{pipeline="p",component="in",topic="orders",partition="0"} 7
# EOF
"#;

    #[test]
    fn rates_come_from_two_scrapes() {
        let (a, b) = (
            Scrape::parse(BEFORE).unwrap(),
            Scrape::parse(AFTER).unwrap(),
        );
        let (rows, lags) = rows("host:8080", &a, &b, 2.0);
        let batch = rows.iter().find(|r| r.component == "batch").unwrap();
        assert_eq!(batch.kind, "stage");
        assert!((batch.in_per_s - 100.0).abs() < 1e-9, "{batch:?}");
        assert!((batch.out_per_s - 100.0).abs() < 1e-9);
        assert!((batch.errors_per_s - 2.0).abs() < 1e-9);
        assert_eq!((batch.fill, batch.capacity), (3.0, 8.0));
        assert!((batch.batch_ms.unwrap() - 50.0).abs() < 1e-9, "{batch:?}");
        let source = rows.iter().find(|r| r.component == "in").unwrap();
        assert_eq!(source.kind, "source");
        assert!((source.out_per_s - 100.0).abs() < 1e-9);
        assert_eq!(lags.len(), 1);
        assert_eq!((lags[0].topic.as_str(), lags[0].lag), ("orders", 7.0));
        let shown = text(&Frame {
            rows,
            lags,
            down: Vec::new(),
        });
        assert!(
            shown.contains("batch") && shown.contains("3/8") && shown.contains("50.0"),
            "{shown}"
        );
    }

    #[test]
    fn a_restarted_process_shows_no_negative_rate() {
        let (a, b) = (
            Scrape::parse(AFTER).unwrap(),
            Scrape::parse(BEFORE).unwrap(),
        );
        let (rows, _) = rows("h", &a, &b, 1.0);
        assert!(rows.iter().all(|r| r.in_per_s >= 0.0 && r.out_per_s >= 0.0));
    }
}
