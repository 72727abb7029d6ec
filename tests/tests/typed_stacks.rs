//! Typed stacks: `vista plugin types --ts` against the real plugin files.
//!
//! The modules for the tokens and games plugins are generated with the real
//! binary into a fresh directory under `tests/ts-client/generated/` (so
//! Node finds `hyperstack-typescript` and `zod`), compiled with `tsc
//! --strict` together with `tests/ts-client/typed-stacks.ts`, which then
//! streams `Token/list` and `ActiveGame/latest` from a live host through the
//! generated stacks (frames validated by the generated zod schemas). A
//! sabotaged copy of one generated type must make the same program fail to
//! compile: proof that the program's accesses are really checked against
//! the generated types.
//!
//! Needs `npm ci` in `tests/ts-client`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use vista_tests::{plugin_artifact, vista_binary, workspace_root, Host, NodeScript};

fn ts_client() -> PathBuf {
    let dir = workspace_root().join("tests/ts-client");
    assert!(
        dir.join("node_modules/typescript").exists() && dir.join("node_modules/zod").exists(),
        "run `npm ci` in {} first",
        dir.display()
    );
    dir
}

fn plugin_types(file: &Path, extra: &[&str]) -> Output {
    Command::new(vista_binary())
        .args(["plugin", "types"])
        .arg(file)
        .arg("--ts")
        .args(extra)
        .output()
        .expect("run vista plugin types")
}

fn generate(file: &Path, extra: &[&str]) -> String {
    let output = plugin_types(file, extra);
    assert!(
        output.status.success(),
        "vista plugin types {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `tsc -p DIR` (the strict config written there); (success, output).
fn tsc(dir: &Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new("node")
        .arg(ts_client().join("node_modules/typescript/bin/tsc"))
        .arg("-p")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run node (is Node.js installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_typed_stacks_compile_strictly_and_stream_typed_entities() {
    let host = Host::with_tokens_and_games().await;
    let tokens_module = generate(&plugin_artifact("vista_tokens"), &["--zod"]);
    let games_module = generate(
        &plugin_artifact("vista_games"),
        &["--zod", "--url", &host.ws_url()],
    );
    // What the modules say, in the words a client uses.
    assert!(
        tokens_module.contains("export interface Token {"),
        "{tokens_module}"
    );
    assert!(
        tokens_module.contains("  supply: number | string;"),
        "{tokens_module}"
    );
    assert!(
        tokens_module.contains("  lastPrice?: number | null;"),
        "{tokens_module}"
    );
    assert!(
        tokens_module.contains("append: { mode: 'list', view: \"Trade/append\" }"),
        "{tokens_module}"
    );
    assert!(
        games_module.contains("export type GameStatus = \"active\" | \"ended\";"),
        "{games_module}"
    );
    assert!(
        games_module.contains("latest: { mode: 'list', view: \"ActiveGame/latest\" }"),
        "{games_module}"
    );
    assert!(
        games_module.contains("ActiveGame: GameSchema,"),
        "{games_module}"
    );
    assert!(
        games_module.contains(&format!(
            "export const DEFAULT_URL = \"{}\";",
            host.ws_url()
        )),
        "{games_module}"
    );

    let generated = ts_client().join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("typed-")
        .tempdir_in(&generated)
        .unwrap();
    std::fs::write(dir.path().join("tokens.ts"), &tokens_module).unwrap();
    std::fs::write(dir.path().join("games.ts"), &games_module).unwrap();
    std::fs::copy(
        ts_client().join("typed-stacks.ts"),
        dir.path().join("typed-stacks.ts"),
    )
    .unwrap();
    let config = json!({
        "compilerOptions": {
            "strict": true,
            "noEmitOnError": true,
            "target": "es2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "skipLibCheck": true,
        },
        "files": ["tokens.ts", "games.ts", "typed-stacks.ts"],
    });
    std::fs::write(dir.path().join("tsconfig.json"), config.to_string()).unwrap();
    let (ok, output) = tokio::task::block_in_place(|| tsc(dir.path(), &[]));
    assert!(ok, "tsc --strict refused the generated modules:\n{output}");

    // Entities before the client connects (snapshot path)...
    host.ingest_ok(
        "tokens",
        &[
            json!({"type": "token_created", "mint": "mintA", "symbol": "AAA", "decimals": 6, "supply": 1000}),
            json!({"type": "supply_changed", "mint": "mintA", "delta": 500}),
            json!({"type": "trade", "id": "t1", "mint": "mintA", "price": 1.25, "amount": 10}),
        ],
    )
    .await;
    host.ingest_ok(
        "games",
        &[
            json!({"type": "game_started", "game": "g1", "players": ["ann"], "startedAt": 100}),
            json!({"type": "game_started", "game": "g2", "players": ["bob", "cy"], "startedAt": 200}),
            json!({"type": "game_started", "game": "g3", "players": ["dee"], "startedAt": 300}),
            json!({"type": "game_ended", "game": "g3", "winner": "dee"}),
        ],
    )
    .await;
    let script = format!(
        "generated/{}/typed-stacks.js",
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    let node = NodeScript::start(&script, &host, &[]);
    // ...and after (live frames). 2^53 + 1 arrives as a string: the schema's
    // `number | string` and its zod union must let it through.
    host.ingest_ok(
        "tokens",
        &[json!({"type": "token_created", "mint": "mintB", "symbol": "BBB", "decimals": 0, "supply": 9_007_199_254_740_993u64})],
    )
    .await;
    host.ingest_ok(
        "games",
        &[
            json!({"type": "game_started", "game": "g4", "players": ["eve"], "startedAt": 400}),
            json!({"type": "attack", "game": "g1", "player": "ann", "damage": 7}),
        ],
    )
    .await;
    let summary = node.finish("go");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["before"]["tokens"]["mintA"],
        json!({"symbol": "AAA", "decimals": 6, "supply": 1500, "lastPrice": 1.25, "trades": ["t1"]}),
        "{summary}"
    );
    assert_eq!(
        summary["after"]["tokens"]["mintB"],
        json!({"symbol": "BBB", "decimals": 0, "supply": "9007199254740993", "lastPrice": null, "trades": []}),
        "{summary}"
    );
    let active: Vec<Value> = summary["after"]["active"].as_array().unwrap().clone();
    assert_eq!(
        active[2],
        json!({"id": "g1", "status": "active", "score": 7, "players": ["ann"], "damage": [7], "winner": null}),
        "{summary}"
    );
    assert_eq!(active[0]["id"], "g4", "{summary}");
    assert_eq!(
        summary["checks"],
        json!({"storedTokenValid": true, "wrongSupplyRefused": true, "wrongStatusRefused": true}),
        "{summary}"
    );
    assert_eq!(summary["gamesUrl"], host.ws_url(), "{summary}");

    // A schema declaring another type for `supply` breaks the program's
    // typed access at compile time.
    let sabotaged = tokens_module.replace("  supply: number | string;", "  supply: boolean;");
    assert_ne!(sabotaged, tokens_module);
    std::fs::write(dir.path().join("tokens.ts"), sabotaged).unwrap();
    let (ok, output) = tokio::task::block_in_place(|| tsc(dir.path(), &["--noEmit"]));
    assert!(!ok, "tsc accepted a boolean supply:\n{output}");
    assert!(
        output.contains("typed-stacks.ts") && output.contains("boolean"),
        "{output}"
    );
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused_with_exit_1() {
    let not_elf = workspace_root().join("Cargo.toml");
    let output = plugin_types(&not_elf, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loadable shared library"), "{stderr}");
    assert!(output.stdout.is_empty());
    let foreign = plugin_artifact("vista_fixture_foreign_cdylib");
    let output = plugin_types(&foreign, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a Vista plugin"), "{stderr}");
    // Without a format there is nothing to print.
    let output = Command::new(vista_binary())
        .args(["plugin", "types"])
        .arg(plugin_artifact("vista_tokens"))
        .output()
        .unwrap();
    assert!(!output.status.success());
}
