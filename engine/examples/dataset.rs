//! The Dataset API: word count and a join with an aggregate, built in Rust
//! instead of SQL, over files this example writes first.
//!
//! `cargo run --release -p millrace-engine --example dataset`

use millrace_engine::dataset::Context;
use millrace_engine::expr::{col, count_star, lit, sum};
use millrace_engine::local::pretty;
use millrace_engine::plan::{JoinKind, SortKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("millrace-dataset-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let text = dir.join("book.txt");
    std::fs::write(&text, "the quick brown fox\njumps over the lazy dog\nthe end\n")?;
    let sales = dir.join("sales.csv");
    std::fs::write(&sales, "product,qty\napple,3\npear,1\napple,2\nfig,7\n")?;
    let products = dir.join("products.csv");
    std::fs::write(&products, "name,color\napple,red\npear,green\n")?;

    let ctx = Context::new();
    let words = ctx
        .read_text(&text.to_string_lossy())?
        .explode_split(col("value"), " ", "word")?
        .group_by(vec![col("word")])
        .agg(vec![count_star()])?
        .sort(vec![SortKey::desc(col("count(*)")), SortKey::asc(col("word"))])?
        .limit(3);
    println!("top words:\n{}", pretty(&words.collect()?)?);

    let totals = ctx
        .read_csv(&sales.to_string_lossy())?
        .filter(col("qty").gt(lit(0)))?
        .alias("s")
        .join(ctx.read_csv(&products.to_string_lossy())?.alias("p"), JoinKind::Left, vec![(col("s.product"), col("p.name"))])?
        .group_by(vec![col("s.product"), col("p.color")])
        .agg(vec![sum(col("s.qty"))])?
        .sort(vec![SortKey::asc(col("product"))])?;
    println!("sales by product:\n{}", pretty(&totals.collect()?)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
