//! Many connections, many teams: 50 API-key connections over 10 TrueContext teams, synced by
//! the timer's fan-out (one queued `sync` per connection) in one `serve --standalone` process
//! and then in two sharing one store. Every submission lands once per connection, no team ever
//! has more than 3 calls in flight at TrueContext, and the team whose connections need more
//! calls than its daily budget stops at the budget: its calls, counted by the simulator, never
//! pass it, while the other teams are untouched by it.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use truecontext_bridge::connections::keyed::{self, ApiKeyConnection, Team};
use truecontext_bridge::naming::ConnectionId;
use truecontext_bridge::store::local;
use truecontext_bridge::sync::{LastSync, StopClass};

use crate::harness::truecontext::TrueContextSim;
use crate::harness::{free_port, Server, TEST_FUNCTION_KEY};

const TEAMS: usize = 10;
const PER_TEAM: usize = 5;
/// Submissions of an ordinary team: each of its connections needs 1 list call and 5 documents,
/// 30 calls for the team, within the budget.
const ORDINARY: usize = 5;
/// Submissions of the greedy team (team 0): 5 × 21 calls, more than the budget.
const GREEDY: usize = 20;
const BUDGET: u64 = 40;

fn key_id(team: usize) -> String {
    format!("key-t{team}")
}

fn secret(team: usize) -> String {
    format!("secret-of-team-{team}-0123456789")
}

struct Round {
    sim: TrueContextSim,
    dir: tempfile::TempDir,
    settings: Vec<(String, String)>,
}

impl Round {
    async fn new() -> Round {
        let sim = TrueContextSim::start();
        sim.latency(Duration::from_millis(50));
        for team in 0..TEAMS {
            sim.add_team(&key_id(team), &secret(team));
            let count = if team == 0 { GREEDY } else { ORDINARY };
            sim.add_team_records(&key_id(team), count, "form-1", Utc::now() - TimeDelta::hours(1));
        }
        let dir = tempfile::tempdir().unwrap();
        let stores = local::open(&dir.path().join("store"), None).unwrap();
        let defaults = truecontext_bridge::config::Settings::load(&truecontext_bridge::config::RawSettings::default());
        let truecontext = defaults.unwrap_or_else(|p| panic!("{p:?}")).truecontext;
        for team in 0..TEAMS {
            for n in 0..PER_TEAM {
                let record = ApiKeyConnection {
                    id: ConnectionId::parse(&format!("c{team}-{n}")).unwrap(),
                    team: Team::parse(&format!("team-{team}")).unwrap(),
                    key_id: key_id(team),
                    secret_setting: format!("TRUECONTEXT_KEY_SECRET_T{team}"),
                    added_at: Utc::now(),
                };
                assert!(keyed::add(&stores, &truecontext, &record).await.unwrap());
            }
        }
        let mut settings = vec![
            ("TRUECONTEXT_BASE_URL".to_owned(), sim.base_url()),
            ("TRUECONTEXT_DAILY_CALL_BUDGET".to_owned(), BUDGET.to_string()),
            ("SYNC_SETTLE_SECONDS".to_owned(), "0".into()),
            ("SYNC_SCHEDULE".to_owned(), "*/3 * * * * *".into()),
            ("TRUECONTEXT_TIMEOUT_SECONDS".to_owned(), "10".into()),
            ("LOCAL_STORE_PATH".to_owned(), dir.path().join("store").display().to_string()),
        ];
        for team in 0..TEAMS {
            settings.push((format!("TRUECONTEXT_KEY_SECRET_T{team}"), secret(team)));
        }
        Round { sim, dir, settings }
    }

    /// Starts `processes` servers on the round's store and answers how long from the first
    /// timer tick (the fan-out) until every connection's first run was recorded.
    async fn run(&self, processes: usize) -> Duration {
        let settings: Vec<(&str, &str)> = self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let started = Instant::now();
        let servers: Vec<Server> = (0..processes)
            .map(|_| {
                let port = free_port();
                let mut all = vec![("FUNCTION_KEY", TEST_FUNCTION_KEY)];
                all.extend_from_slice(&settings);
                Server::start(&["serve", "--standalone", "--port", &port.to_string()], port, &all)
            })
            .collect();
        let stores = local::open(&self.dir.path().join("store"), None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(240);
        let all_ran = loop {
            let last = truecontext_bridge::sync::last_syncs(&stores).await.unwrap();
            if last.len() == TEAMS * PER_TEAM {
                break chrono::Utc::now();
            }
            if Instant::now() >= deadline {
                let ran: Vec<&str> = last.iter().map(|l| l.connection.as_str()).collect();
                let log = servers.iter().map(Server::log).collect::<Vec<_>>().join("\n----\n");
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("submission landed")).collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                panic!("only {} of the connections ran: {ran:?}\n{tail}", last.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        drop(servers);
        let first_tick = first_tick_started(&stores).await;
        assert!(started.elapsed() < Duration::from_secs(240));
        // Later ticks run the connections again (a list call each): the first round is what
        // is timed, to the poll (every 100 ms) that saw the last connection's first run.
        (all_ran - first_tick).to_std().unwrap_or_default()
    }

    async fn check(&self) {
        let stores = local::open(&self.dir.path().join("store"), None).unwrap();
        let last: Vec<LastSync> = truecontext_bridge::sync::last_syncs(&stores).await.unwrap();
        for team in 0..TEAMS {
            let key = key_id(team);
            let in_flight = self.sim.max_in_flight_of(&key);
            assert!(in_flight <= 3, "team {team} had {in_flight} calls in flight at once");
            let calls = self.sim.calls_today_of(&key);
            assert!(calls <= BUDGET, "team {team} made {calls} calls against a budget of {BUDGET}");
            let mut expected = self.sim.team_ids(&key);
            expected.sort();
            for n in 0..PER_TEAM {
                let connection = format!("c{team}-{n}");
                let landed = truecontext_bridge::landing::list(&stores, &connection).await.unwrap();
                assert!(landed.iter().all(|l| l.row.version == 1), "{connection}: something landed twice");
                let mut ids: Vec<String> = landed.iter().map(|l| l.id.clone()).collect();
                ids.sort();
                let run = last.iter().find(|l| l.connection == connection).expect("a run recorded");
                if team == 0 {
                    // The greedy team stops at its budget; what it landed is a part of its data.
                    assert!(ids.iter().all(|id| expected.contains(id)), "{connection}: {ids:?}");
                } else {
                    assert_eq!(ids, expected, "{connection}: every submission of its team, once");
                    // Its last run may be a later tick's, stopped by the budget those list calls
                    // spent; nothing else may have stopped it.
                    let budget = run.stopped_class.is_none_or(|c| c == StopClass::Budget);
                    assert!(run.completed || budget, "{connection}: {run:?}");
                }
            }
        }
        let greedy_stops = last
            .iter()
            .filter(|l| l.connection.starts_with("c0-") && l.stopped_class == Some(StopClass::Budget))
            .count();
        assert!(greedy_stops > 0, "the greedy team met its budget: {last:?}");
        assert_eq!(self.sim.calls_today_of(&key_id(0)), BUDGET, "the greedy team used its budget to the call");
    }
}

/// When the first recorded timer tick started (the runs table's "sync"/"last" row counts ticks;
/// the first one queued every connection).
async fn first_tick_started(stores: &truecontext_bridge::store::Stores) -> chrono::DateTime<Utc> {
    use truecontext_bridge::store::{Table, TypedTable};
    let table = TypedTable::new(stores.tables.as_ref(), Table::Runs);
    let tick = table.get::<serde_json::Value>("sync", "last").await.unwrap().expect("a tick recorded").value;
    let count = tick["count"].as_u64().unwrap();
    let started: chrono::DateTime<Utc> = tick["started_at"].as_str().unwrap().parse().unwrap();
    // Later ticks (every 3 s) start later than the first: step back to the first.
    started - TimeDelta::seconds(3 * (count as i64 - 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_fan_out_over_processes_within_each_teams_cap_and_budget() {
    let one = Round::new().await;
    let alone = one.run(1).await;
    one.check().await;
    let two = Round::new().await;
    let shared = two.run(2).await;
    two.check().await;
    let calls: u64 = (0..TEAMS).map(|t| two.sim.calls_today_of(&key_id(t))).sum();
    eprintln!(
        "50 connections over 10 teams: one process {:.1} s, two processes sharing the store {:.1} s ({calls} calls)",
        alone.as_secs_f64(),
        shared.as_secs_f64()
    );
}
