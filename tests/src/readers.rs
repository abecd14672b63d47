//! The real programs that read leakbpf's outputs, run by the tests as a user would:
//! `go tool pprof`, a Prometheus server and promtool, headless Chromium; a plain HTTP
//! client for `--http`; and the debuginfod server leakbpf reads debug files from. `cargo xtask setup` installs them from Debian; a test that
//! needs one that is missing fails, saying what to install.
//!
//! Network: 127.0.0.1 only.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::kernel::find_program;

/// How long a reader may take: Prometheus to start and scrape, Chromium to draw.
const READER_TIMEOUT: Duration = Duration::from_secs(60);

/// `name`, found on PATH; fails the test, naming the Debian package that has it.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run `cargo xtask setup`, which installs it (Debian \
             package {package})"
        )
    })
}

/// An HTTP response, whatever its status.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub allow: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone())
            .unwrap_or_else(|err| panic!("the body is not UTF-8: {err}"))
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(READER_TIMEOUT))
        .build()
        .into()
}

fn response(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, url: &str) -> Response {
    let mut response = result.unwrap_or_else(|err| panic!("{url}: {err}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    let body = response
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .unwrap_or_else(|err| panic!("{url}: reading the body: {err}"));
    Response {
        status: response.status().as_u16(),
        content_type,
        allow,
        body,
    }
}

/// `GET url`.
pub fn get(url: &str) -> Response {
    response(client().get(url).call(), url)
}

/// `HEAD url`.
pub fn head(url: &str) -> Response {
    response(client().head(url).call(), url)
}

/// `POST url`, with an empty body.
pub fn post(url: &str) -> Response {
    response(client().post(url).send_empty(), url)
}

/// A TCP port free on 127.0.0.1 a moment ago, for a server that cannot be told to pick
/// one itself.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1");
    listener.local_addr().expect("its address").port()
}

/// One row of `go tool pprof -top`: a function's flat and cumulative values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRow {
    pub flat: u64,
    pub cum: u64,
    pub function: String,
}

/// What `go tool pprof -top -unit=B` printed about a heap profile.
#[derive(Debug)]
pub struct PprofTop {
    /// Everything it printed, for messages.
    pub text: String,
    /// The total of the sample type shown (`... of N B total`).
    pub total: u64,
    pub rows: Vec<TopRow>,
}

/// `go tool pprof -top -unit=B -nodefraction=0 SOURCE`, a file or a URL, parsed: every
/// function, in bytes. Fetched profiles are kept in a temporary directory.
pub fn pprof_top(source: &str) -> PprofTop {
    let text = go_pprof(&["-top", "-unit=B", "-nodefraction=0"], source);
    let total = text
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("% of ")?;
            rest.strip_suffix(" total")?.strip_suffix('B')?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no total in go tool pprof's output:\n{text}"));
    let rows = text
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat  flat%"))
        .skip(1)
        .map(|line| {
            // flat flat% sum% cum cum% name; the name may hold spaces.
            let mut rest = line.trim_start();
            let mut columns = Vec::new();
            for _ in 0..5 {
                let end = rest
                    .find(' ')
                    .unwrap_or_else(|| panic!("not a -top row: {line:?}"));
                columns.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            let bytes = |column: &str| -> u64 {
                column
                    .trim_end_matches('B')
                    .parse()
                    .unwrap_or_else(|_| panic!("not bytes: {column:?} in {line:?}"))
            };
            TopRow {
                flat: bytes(columns[0]),
                cum: bytes(columns[3]),
                function: rest.to_owned(),
            }
        })
        .collect();
    PprofTop { text, total, rows }
}

/// `go tool pprof -raw SOURCE`: the profile's samples, locations and mappings as text.
pub fn pprof_raw(source: &str) -> String {
    go_pprof(&["-raw"], source)
}

fn go_pprof(args: &[&str], source: &str) -> String {
    let go = require_program("go", "golang-go");
    let saved = TempDir::new().expect("a temporary directory");
    let output = Command::new(&go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", saved.path())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", go.display()));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "go tool pprof {args:?} {source} failed: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// `promtool check metrics`, fed `text`: its complaints, empty when it passes.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let promtool = require_program("promtool", "prometheus");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", promtool.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    drop(stdin);
    let output = child.wait_with_output().expect("promtool's output");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A server the tests started, on 127.0.0.1, writing its log in its temporary directory.
/// Killed when dropped.
struct Server {
    name: &'static str,
    child: Child,
    url: String,
    dir: TempDir,
}

impl Server {
    /// Runs `program` with `args`, found on PATH (from Debian's `package`), in `dir`; its
    /// address is `address`.
    fn start(
        name: &'static str,
        package: &str,
        args: &[String],
        address: &str,
        dir: TempDir,
    ) -> Self {
        let program = require_program(name, package);
        let log = fs::File::create(dir.path().join("server.log")).expect("a log file");
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()));
        Self {
            name,
            child,
            url: format!("http://{address}"),
            dir,
        }
    }

    /// Polls `found` until it returns something; fails after [`READER_TIMEOUT`] with the
    /// server's log.
    fn wait<T>(&self, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + READER_TIMEOUT;
        loop {
            if let Some(value) = found() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not get {what} within {READER_TIMEOUT:?}; its log:\n{}",
                self.name,
                fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server on 127.0.0.1, scraping one target every second, its data in a
/// temporary directory. Killed when dropped.
pub struct Prometheus(Server);

/// One series of a query's result: its labels and value.
#[derive(Debug)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts it scraping `target` (`HOST:PORT`) as job `job`, and waits until it is
    /// ready.
    pub fn start(job: &str, target: &str) -> Self {
        let dir = TempDir::new().expect("a temporary directory");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let address = format!("127.0.0.1:{}", free_port());
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={address}"),
        ];
        let server = Self(Server::start(
            "prometheus",
            "prometheus",
            &args,
            &address,
            dir,
        ));
        server.wait("to be ready", || {
            let ready = ureq::get(format!("{}/-/ready", server.0.url)).call();
            ready.is_ok_and(|r| r.status() == 200).then_some(())
        });
        server
    }

    /// Polls `found` until it returns something; fails after [`READER_TIMEOUT`] with
    /// Prometheus's log.
    pub fn wait<T>(&self, what: &str, found: impl FnMut() -> Option<T>) -> T {
        self.0.wait(what, found)
    }

    /// The instant vector of `query`, through the HTTP query API.
    pub fn query(&self, query: &str) -> Vec<Sample> {
        let url = format!("{}/api/v1/query", self.0.url);
        let mut response = client()
            .get(&url)
            .query("query", query)
            .call()
            .unwrap_or_else(|err| panic!("{url}?query={query}: {err}"));
        let body: Value = serde_json::from_reader(response.body_mut().as_reader())
            .unwrap_or_else(|err| panic!("{url}?query={query}: not JSON: {err}"));
        assert_eq!(body["status"], "success", "{query}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{query}: no result in {body}"))
            .iter()
            .map(|series| Sample {
                labels: serde_json::from_value(series["metric"].clone())
                    .unwrap_or_else(|err| panic!("{query}: labels: {err} in {series}")),
                value: series["value"][1]
                    .as_str()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("{query}: no value in {series}")),
            })
            .collect()
    }
}

/// elfutils' debuginfod server on 127.0.0.1, serving the ELF files of a temporary
/// directory by build id, as a distribution's server serves its packages' debug files.
/// Killed when dropped.
pub struct DebuginfodServer(Server);

impl DebuginfodServer {
    /// Serves a copy of `file`, and waits until it serves it as the debug file of
    /// `build_id` (hex).
    pub fn serving(file: &Path, build_id: &str) -> Self {
        let dir = TempDir::new().expect("a temporary directory");
        let served = dir.path().join("served");
        fs::create_dir(&served).expect("a directory to serve");
        let name = file.file_name().expect("a file name");
        fs::copy(file, served.join(name))
            .unwrap_or_else(|err| panic!("cannot copy {}: {err}", file.display()));
        let port = free_port();
        let args = [
            "--scan-file-dir".to_owned(),
            format!("--port={port}"),
            format!("--database={}", dir.path().join("index.sqlite").display()),
            served.display().to_string(),
        ];
        let server = Self(Server::start(
            "debuginfod",
            "debuginfod",
            &args,
            &format!("127.0.0.1:{port}"),
            dir,
        ));
        let url = server.debug_file_url(build_id);
        server.0.wait("to serve the debug file", || {
            let served = ureq::get(&url).call();
            served.is_ok_and(|r| r.status() == 200).then_some(())
        });
        server
    }

    /// What `DEBUGINFOD_URLS` names it by.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    fn debug_file_url(&self, build_id: &str) -> String {
        format!("{}/buildid/{build_id}/debuginfo", self.0.url)
    }
}

/// Headless Chromium, with a profile of its own in a temporary directory.
fn chromium(args: &[&str], page: &Path) -> std::process::Output {
    let chromium = require_program("chromium", "chromium");
    let profile = TempDir::new().expect("a temporary directory");
    Command::new(&chromium)
        .args([
            "--headless",
            // As root, Chromium runs only without its sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", chromium.display()))
}

/// A screenshot of `page` in a `width` × `height` window, as PNG, at `png`.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) {
    let output = chromium(
        &[
            &format!("--window-size={width},{height}"),
            &format!("--screenshot={}", png.display()),
        ],
        page,
    );
    assert!(
        output.status.success() && png.exists(),
        "chromium took no screenshot of {}: {}",
        page.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The document `page` became once loaded and its scripts ran, as HTML.
pub fn rendered_dom(page: &Path) -> String {
    let output = chromium(&["--dump-dom"], page);
    assert!(
        output.status.success(),
        "chromium could not load {}: {}",
        page.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A picture's pixels, as RGB.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pixels: Vec<[u8; 3]>,
}

impl Picture {
    /// Reads a PNG file.
    pub fn read(path: &Path) -> Self {
        let file = fs::File::open(path)
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder
            .read_info()
            .unwrap_or_else(|err| panic!("{} is not a PNG: {err}", path.display()));
        let mut buffer = vec![0; reader.output_buffer_size().expect("a PNG of sane size")];
        let info = reader
            .next_frame(&mut buffer)
            .unwrap_or_else(|err| panic!("cannot decode {}: {err}", path.display()));
        let channels = info.color_type.samples();
        let pixels = buffer[..info.buffer_size()]
            .chunks_exact(channels)
            .map(|pixel| match pixel {
                [gray] | [gray, _] => [*gray; 3],
                [r, g, b, ..] => [*r, *g, *b],
                _ => unreachable!("a PNG pixel has 1 to 4 samples"),
            })
            .collect();
        Self {
            width: info.width,
            height: info.height,
            pixels,
        }
    }

    /// The share of its pixels in colour (not white, grey or black): what is drawn on a
    /// page, rather than its background.
    pub fn colored_share(&self) -> f64 {
        let colored = self
            .pixels
            .iter()
            .filter(|[r, g, b]| r.max(g).max(b) - r.min(g).min(b) > 48)
            .count();
        colored as f64 / self.pixels.len().max(1) as f64
    }

    /// How many different colours it holds.
    pub fn colors(&self) -> usize {
        let mut colors = self.pixels.clone();
        colors.sort_unstable();
        colors.dedup();
        colors.len()
    }
}
