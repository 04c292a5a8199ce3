//! Runs one command in a sandbox and prints the outcome (a manual check).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = isotest_sandbox::SandboxConfig {
        allow_weaker_isolation: std::env::var_os("ISOTEST_WEAK").is_some(),
        ..Default::default()
    };
    let sandboxer = isotest_sandbox::Sandboxer::new(config)?;
    println!("{}", sandboxer.isolation());
    let command: Vec<String> = std::env::args().skip(1).collect();
    let outcome = sandboxer
        .run(isotest_sandbox::RunSpec {
            command,
            ..Default::default()
        })
        .await?;
    print!("{}", outcome.stdout.render("stdout"));
    eprint!("{}", outcome.stderr.render("stderr"));
    println!("{outcome:?}");
    Ok(())
}
