//! `tcbridge serve`: behind the Functions host (the custom handler), on its own
//! (`--standalone`: the HTTP routes, the timer, the queue worker, housekeeping), or with the
//! demo simulator (`--demo`). The long-lived tasks run supervised.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::RawSettings;
use crate::functions::{self, Trigger};
use crate::handlers::{App, Mode};
use crate::telemetry::{self, Output};
use crate::{host, standalone};

use super::{load_settings, open_app};

pub(super) async fn serve_host(raw: &RawSettings) -> anyhow::Result<ExitCode> {
    let port = raw
        .get("FUNCTIONS_CUSTOMHANDLER_PORT")
        .or_else(|| raw.get("FUNCTIONS_HTTPWORKER_PORT"))
        .context("FUNCTIONS_CUSTOMHANDLER_PORT is not set: `tcbridge serve` runs under the Functions host; use `tcbridge serve --standalone` to run on its own")?;
    let port: u16 =
        port.parse().with_context(|| format!("FUNCTIONS_CUSTOMHANDLER_PORT {port:?} is not a port number"))?;
    // Bind before anything else: the host's readiness probe starts at once.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stdout);
    let app = open_app(settings, Mode::Functions)?;
    tracing::info!(port, store = app.stores.kind.name(), "custom handler listening on 127.0.0.1:{port}");
    let stop = CancellationToken::new();
    let workers = [
        supervised(&app, "housekeeping", &stop, |app, stop| {
            standalone::run_housekeeping(app, HOUSEKEEPING_EVERY, stop)
        }),
        supervised(&app, "counters", &stop, standalone::run_counters),
    ];
    let served = axum::serve(listener, host::router(app)).with_graceful_shutdown(shutdown_signal()).await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// What the demo asks of a standalone server: a connection synced at once on start, not at
/// the first tick, and word of the address it listens on (where its pushes go).
pub(super) struct DemoStart {
    pub first_sync: &'static str,
    pub listening: tokio::sync::oneshot::Sender<SocketAddr>,
}

pub(super) async fn serve_standalone(
    raw: &RawSettings,
    port: Option<u16>,
    address: Option<IpAddr>,
    demo: Option<DemoStart>,
) -> anyhow::Result<ExitCode> {
    let settings = load_settings(raw)?;
    telemetry::init(settings.log_format, Output::Stdout);
    let app = open_app(settings.clone(), Mode::Standalone)?;
    let addr = SocketAddr::new(address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port.unwrap_or(7071));
    // The key is settled (and a generated one printed) before the port opens, so whoever sees
    // the port open can already read the key.
    let (key, generated) = standalone::function_key(settings.function_key.as_ref(), &app.stores)
        .await
        .context("cannot read or create the standalone function key")?;
    if generated {
        // Shown once, on the terminal only; later starts reuse the stored key.
        say!("A function key was generated for this standalone server and kept in the store.")?;
        say!("Pass it as the x-functions-key header or ?code= on /api/authorize and /api/status:")?;
        say!("    {}", key.expose())?;
    } else if settings.function_key.is_none() {
        say!(
            "Using the function key generated on an earlier start. It is not shown again: if it is lost, \
             set FUNCTION_KEY to a key of your choice (at least 16 characters); while it is set, only it is accepted."
        )?;
    }
    telemetry::register_secret(&key);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local_addr = listener.local_addr()?;
    say!("truecontext-bridge listening on http://{local_addr}/api/ (standalone, store: {})", app.stores.kind.name())?;
    tracing::info!(%local_addr, "standalone server started");

    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for function in functions::FUNCTIONS {
        match function.trigger {
            Trigger::Timer => {
                let schedule = settings.sync_schedule.clone();
                workers.push(supervised(&app, "timer", &stop, move |app, stop| {
                    standalone::run_timer(app, function, schedule.clone(), stop)
                }));
            }
            Trigger::Queue => workers.push(supervised(&app, "queue worker", &stop, move |app, stop| {
                let worker = standalone::QueueWorker::for_function(app.clone(), function);
                worker.run(app.stores.queues.clone(), stop)
            })),
            Trigger::Http { .. } => {}
        }
    }
    workers.push(supervised(&app, "housekeeping", &stop, |app, stop| {
        standalone::run_housekeeping(app, HOUSEKEEPING_EVERY, stop)
    }));
    workers.push(supervised(&app, "counters", &stop, standalone::run_counters));
    if let Some(demo) = demo {
        app.sync_soon(demo.first_sync).await;
        let _ = demo.listening.send(local_addr);
    }
    let limits = standalone::ServerLimits {
        max_connections: settings.max_connections,
        max_connections_per_address: settings.max_connections_per_address,
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        ..Default::default()
    };
    let router = standalone::router(app.clone(), key, limits);
    let served = standalone::serve(&app, listener, router, limits, shutdown_signal()).await;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `serve --standalone --demo`: the simulator in-process, the settings pointed at it.
#[cfg(feature = "demo")]
pub(super) async fn serve_demo(
    mut raw: RawSettings,
    port: Option<u16>,
    address: Option<IpAddr>,
) -> anyhow::Result<ExitCode> {
    use crate::simulator::{PushTarget, TrueContextSim, KEY_ID, KEY_SECRET};
    // Started off the runtime: the simulator runs its own, on a thread of its own.
    let sim = tokio::task::spawn_blocking(|| TrueContextSim::start_demo(300, std::time::Duration::from_secs(4)))
        .await
        .context("cannot start the TrueContext simulator")?;
    let sim = std::sync::Arc::new(sim);
    let base_url = sim.base_url();
    // The demo's push credential: made up per start, printed like the function key.
    let password = crate::secret::SecretString::new(hex::encode(rand::random::<[u8; 12]>()));
    telemetry::register_secret(&password);
    for (name, value) in [
        ("TRUECONTEXT_BASE_URL", base_url.as_str()),
        ("TRUECONTEXT_AUTH", "basic"),
        ("TRUECONTEXT_API_KEY_ID", KEY_ID),
        ("TRUECONTEXT_API_KEY_SECRET", KEY_SECRET),
        ("TRUECONTEXT_CONNECTION", "demo"),
        ("STORE", "local"),
        ("SYNC_BACKFILL_DAYS", "7"),
        ("SYNC_SETTLE_SECONDS", "2"),
        ("SYNC_OVERLAP_SECONDS", "30"),
        ("WEBHOOK_AUTH", "basic"),
        ("WEBHOOK_BASIC_USERNAME", "demo"),
        ("WEBHOOK_BASIC_PASSWORD", password.expose()),
    ] {
        raw.set(name, value);
    }
    // Soon enough to see within a minute that form 1003's pushes never come.
    raw.set_unless_environment("MISSED_PUSH_GRACE_SECONDS", "15");
    // The committed local.settings.json's schedule (every 30 minutes, for the Functions tools)
    // once made a fresh clone's demo show nothing for half an hour: only the environment may
    // slow the demo down.
    raw.set_unless_environment("SYNC_SCHEDULE", "*/10 * * * * *");
    say!("demo: a TrueContext simulator at {base_url} with 300 submissions and a new one every few seconds;")?;
    say!("demo: synced as connection \"demo\" every 10 s. Try `tcbridge submissions list` and /api/status.")?;
    say!(
        "demo: TrueContext also pushes each new and edited submission to /api/webhook as user \"demo\" with password:"
    )?;
    say!("    {}", password.expose())?;
    say!("demo: the destination of form 1003 is broken on purpose: the sync catches its submissions up, and status")?;
    say!("demo: counts them as missed pushes; after three, the pushes_missing ALERT in this log is the demo's, on purpose.")?;
    let (listening, address_told) = tokio::sync::oneshot::channel::<SocketAddr>();
    let pushing = sim.clone();
    tokio::spawn(async move {
        let Ok(mut addr) = address_told.await else { return };
        // Listening on every address (`--address 0.0.0.0`): the simulator calls in on loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        pushing.push_to(PushTarget {
            url: format!("http://{addr}/api/webhook?connection=demo"),
            username: "demo".into(),
            password: password.expose().to_owned(),
            drop_form: Some(crate::simulator::DEMO_FORMS[2].to_owned()),
        });
    });
    let served = serve_standalone(&raw, port, address, Some(DemoStart { first_sync: "demo", listening })).await;
    tokio::task::spawn_blocking(move || drop(sim)).await.ok();
    served
}

#[cfg(not(feature = "demo"))]
pub(super) async fn serve_demo(_: RawSettings, _: Option<u16>, _: Option<IpAddr>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this build has no demo: it was built without the `demo` feature (the deploy package leaves it out)")
}

/// How often a running server of either mode runs its housekeeping.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Spawns one of a server's long-lived tasks under [`standalone::supervise`].
fn supervised<Fut>(
    app: &App,
    task: &'static str,
    stop: &CancellationToken,
    start: impl Fn(App, CancellationToken) -> Fut + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (app, stop) = (app.clone(), stop.clone());
    let starter = (app.clone(), stop.clone());
    tokio::spawn(standalone::supervise(app, task, stop, move || start(starter.0.clone(), starter.1.clone())))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
