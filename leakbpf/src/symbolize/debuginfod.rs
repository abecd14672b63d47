//! Debug files fetched by build id from the servers `DEBUGINFOD_URLS` names, as gdb,
//! perf, valgrind and bpftrace do, for the objects that have neither symbols nor debug
//! information on this host (distribution binaries are stripped).
//!
//! A fetch may take seconds: it runs on a thread of its own, so the symbolizer and the
//! agent's loop never wait for a server. A frame left unnamed gets its name once its
//! file is here, in a later report or at the latest in the final one, which waits a
//! little for fetches still under way. Files are cached on disk where every debuginfod
//! client caches them (`$DEBUGINFOD_CACHE_PATH`, else
//! `$XDG_CACHE_HOME/debuginfod_client`), so the next run finds them at once.

use std::{
    collections::HashMap,
    io,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use debuginfod::{BuildId, CachingClient, Client, HttpClient, HttpClientError, Readable};
use ureq::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum DebuginfodError {
    #[error("DEBUGINFOD_URLS: {0:#}")]
    Client(anyhow::Error),
    #[error("the debuginfod cache: {0:#}")]
    Cache(anyhow::Error),
    #[error("cannot start the debuginfod thread")]
    Thread(#[source] io::Error),
}

/// What became of one build id's debug file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fetch {
    Pending,
    Here(PathBuf),
    /// No server has it, or none answered: not asked again in this run.
    Missing,
}

#[derive(Default)]
struct State {
    fetches: HashMap<String, Fetch>,
    /// Files fetched so far: when it grows, unnamed frames are worth another try.
    arrived: u64,
}

/// The handle to the fetching thread.
#[derive(Clone)]
pub struct Debuginfod {
    state: Arc<(Mutex<State>, Condvar)>,
    requests: mpsc::Sender<String>,
}

impl Debuginfod {
    /// A client of the servers `DEBUGINFOD_URLS` names; None when it names none.
    pub fn from_env() -> Result<Option<Self>, DebuginfodError> {
        // A server that stops answering holds one fetch, never the run.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let Some(client) = Client::builder()
            .http_client(Http(agent))
            .build_from_env()
            .map_err(DebuginfodError::Client)?
        else {
            return Ok(None);
        };
        let client = CachingClient::from_env(client).map_err(DebuginfodError::Cache)?;
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let (requests, incoming) = mpsc::channel::<String>();
        let shared = Arc::clone(&state);
        thread::Builder::new()
            .name("debuginfod".into())
            .spawn(move || {
                for build_id in incoming {
                    let fetch = match client.fetch_debug_info(&BuildId::formatted(&build_id)) {
                        Ok(Some(path)) => Fetch::Here(path),
                        Ok(None) => Fetch::Missing,
                        Err(err) => {
                            log::warn!("debuginfod: {err:#}");
                            Fetch::Missing
                        }
                    };
                    let (state, changed) = &*shared;
                    let mut state = lock(state);
                    if matches!(fetch, Fetch::Here(_)) {
                        state.arrived += 1;
                    }
                    state.fetches.insert(build_id, fetch);
                    changed.notify_all();
                }
            })
            .map_err(DebuginfodError::Thread)?;
        Ok(Some(Self { state, requests }))
    }

    /// The debug file of `build_id` if it is here; if it was never asked for, it is
    /// fetched in the background.
    pub fn debug_file(&self, build_id: &str) -> Option<PathBuf> {
        let mut state = lock(&self.state.0);
        match state.fetches.get(build_id) {
            Some(Fetch::Here(path)) => Some(path.clone()),
            Some(Fetch::Pending | Fetch::Missing) => None,
            None => {
                state.fetches.insert(build_id.to_owned(), Fetch::Pending);
                // The thread lives as long as this handle.
                let _ = self.requests.send(build_id.to_owned());
                None
            }
        }
    }

    /// How many files have arrived so far.
    pub fn arrived(&self) -> u64 {
        lock(&self.state.0).arrived
    }

    /// Waits until no fetch is under way, or `limit` has passed.
    pub fn settle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (state, changed) = &*self.state;
        let mut state = lock(state);
        while state.fetches.values().any(|fetch| *fetch == Fetch::Pending) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            state = match changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The state, even if a thread panicked while holding it: it is a plain map.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// ureq as the debuginfod client's HTTP.
#[derive(Debug)]
struct Http(ureq::Agent);

impl HttpClient for Http {
    fn get(&self, url: &str) -> Result<Box<dyn Readable>, HttpClientError> {
        match self.0.get(url).call() {
            Ok(response) => Ok(Box::new(Body(response.into_body().into_reader()))),
            Err(ureq::Error::StatusCode(code)) => Err(HttpClientError::StatusCode(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            )),
            Err(err) => Err(HttpClientError::Other(Box::new(err))),
        }
    }
}

/// A response's body, which debuginfod wants `Debug`.
struct Body(ureq::BodyReader<'static>);

impl io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a debuginfod response")
    }
}
