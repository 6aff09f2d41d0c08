//! A `wasi:cli` command for the node agent's tests. Its arguments are steps, run in order:
//!
//! - `print TEXT` / `eprint TEXT`: a line on stdout / stderr
//! - `env NAME`: prints `NAME=value` (or `NAME unset`)
//! - `sleep MS`: sleeps
//! - `exit CODE`: exits with that code
//! - `alloc MIB`: allocates and touches that many MiB, and keeps them
//! - `spin MS`: burns CPU for that long
//! - `cat PATH`: prints a file
//! - `write PATH TEXT`: writes a file
//! - `ls PATH`: prints the names in a directory
//! - `count N MS`: prints `tick i` N times, MS apart
//! - `work N`: runs N million steps of arithmetic and prints `worked MS ms` (wall time)
//! - `poll PATH MS`: prints a file's text each time it changes, checking every MS, forever
//! - `serve PORT`: listens on the wildcard address at PORT, prints `listening on ADDR`, and
//!   answers each connection with `ADDR from PEER` (its local and peer addresses)
//! - `fetch ADDR`: connects to ADDR (`ip:port`) and prints what it answers
//! - `forever`: sleeps until stopped
//!
//! Running out of steps exits 0; a step that fails prints why and exits 1.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut steps = args.iter().map(String::as_str);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    while let Some(step) = steps.next() {
        let mut arg = || {
            steps.next().unwrap_or_else(|| {
                eprintln!("step {step} needs an argument");
                std::process::exit(2)
            })
        };
        let result: Result<(), String> = match step {
            "print" => {
                println!("{}", arg());
                Ok(())
            }
            "eprint" => {
                eprintln!("{}", arg());
                Ok(())
            }
            "env" => {
                let name = arg();
                match std::env::var(name) {
                    Ok(value) => println!("{name}={value}"),
                    Err(_) => println!("{name} unset"),
                }
                Ok(())
            }
            "sleep" => number(arg()).map(|ms| std::thread::sleep(Duration::from_millis(ms))),
            "exit" => number(arg()).map(|code| std::process::exit(code as i32)),
            "alloc" => number(arg()).map(|mib| {
                let mut block = vec![0u8; (mib as usize) << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                kept.push(block);
            }),
            "spin" => number(arg()).map(|ms| {
                let until = Instant::now() + Duration::from_millis(ms);
                let mut x = 0u64;
                while Instant::now() < until {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }),
            "cat" => {
                let path = arg();
                std::fs::read_to_string(path)
                    .map(|text| print!("{text}"))
                    .map_err(|e| format!("cat {path}: {e}"))
            }
            "write" => {
                let (path, text) = (arg(), arg());
                std::fs::write(path, text).map_err(|e| format!("write {path}: {e}"))
            }
            "ls" => {
                let path = arg();
                std::fs::read_dir(path)
                    .map(|entries| {
                        let mut names: Vec<String> = entries
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect();
                        names.sort();
                        println!("{}", names.join(" "));
                    })
                    .map_err(|e| format!("ls {path}: {e}"))
            }
            "count" => {
                let (n, ms) = (arg(), arg());
                number(n).and_then(|n| {
                    number(ms).map(|ms| {
                        for i in 0..n {
                            println!("tick {i}");
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                    })
                })
            }
            "work" => number(arg()).map(|millions| {
                let start = Instant::now();
                let mut x = 0u64;
                for _ in 0..millions * 1_000_000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                println!("worked {} ms", start.elapsed().as_millis());
            }),
            "poll" => {
                let (path, ms) = (arg(), arg());
                number(ms).map(|ms| {
                    let mut last = None;
                    loop {
                        let now = std::fs::read_to_string(path).ok();
                        if now != last {
                            println!("{}", now.as_deref().unwrap_or("(missing)"));
                            last = now;
                        }
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                })
            }
            "serve" => number(arg()).and_then(serve),
            "fetch" => {
                let address = arg();
                fetch(address).map_err(|e| format!("fetch {address}: {e}"))
            }
            "forever" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => Err(format!("unknown step {other}")),
        };
        if let Err(error) = result {
            eprintln!("{error}");
            std::process::exit(1);
        }
    }
}

fn serve(port: u64) -> Result<(), String> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port as u16))
        .map_err(|e| format!("serve {port}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {local}");
    for stream in listener.incoming() {
        let mut stream = stream.map_err(|e| format!("accept: {e}"))?;
        let peer = stream
            .peer_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let local = stream
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let _ = writeln!(stream, "{local} from {peer}");
    }
    Ok(())
}

fn fetch(address: &str) -> std::io::Result<()> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    print!("{answer}");
    Ok(())
}

fn number(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{text} is not a number"))
}
