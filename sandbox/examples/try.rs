//! Runs one command in a sandbox and prints the outcome (a manual check).

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandboxer = isotest_sandbox::Sandboxer::new(isotest_sandbox::SandboxConfig::default())?;
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
