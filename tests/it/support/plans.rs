//! The plan texts the tests against the simulated AWS run: one source (account
//! 111111111111 in us-east-1, the key `alias/share`), the targets the seeded world
//! knows, the first `volumes` of the seeded volumes, and the options of each test.

/// The source account, and the target accounts of `DR` and `VAULT`.
pub const SOURCE_ACCOUNT: &str = "111111111111";
pub const DR_ACCOUNT: &str = "222222222222";
pub const VAULT_ACCOUNT: &str = "333333333333";

/// One target of a plan, written in this order.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub region: &'static str,
    pub account: &'static str,
    /// The role's name in `account`; `None` for a target in the source account.
    pub role: Option<&'static str>,
    pub external_id: Option<&'static str>,
    pub kms_key: &'static str,
    pub availability_zone: &'static str,
    /// Further lines of the target (without indentation), e.g. `lock: none`.
    pub more: &'static [&'static str],
}

/// The recovery account in eu-west-1, through its role `dr`.
pub const DR: Target = Target {
    region: "eu-west-1",
    account: DR_ACCOUNT,
    role: Some("dr"),
    external_id: None,
    kms_key: "alias/dr",
    availability_zone: "eu-west-1b",
    more: &[],
};

/// The vault account in us-west-2, through its role `vault`.
pub const VAULT: Target = Target {
    region: "us-west-2",
    account: VAULT_ACCOUNT,
    role: Some("vault"),
    external_id: None,
    kms_key: "alias/vault",
    availability_zone: "us-west-2a",
    more: &[],
};

/// The options every cross-account test plan tags its resources with.
pub const OWNER_TAG: &str = "  tags: {Owner: sre}\n";

impl Target {
    fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("region: {}", self.region), format!("account: \"{}\"", self.account)];
        if let Some(role) = self.role {
            out.push(format!("role_arn: arn:aws:iam::{}:role/{role}", self.account));
        }
        if let Some(id) = self.external_id {
            out.push(format!("external_id: {id}"));
        }
        out.push(format!("kms_key: {}", self.kms_key));
        out.push(format!("availability_zone: {}", self.availability_zone));
        out.extend(self.more.iter().map(|l| l.to_string()));
        out
    }
}

/// A plan named `name` copying the first `volumes` seeded volumes to `targets` (one
/// target is written as `target:`, several as `targets:`), with `options` (indented
/// lines; none when empty) last, so a test may append further options.
pub fn plan_text(name: &str, targets: &[Target], volumes: usize, options: &str) -> String {
    let mut y = format!(
        "\nversion: 1\nname: {name}\nsource:\n  region: us-east-1\n  account: \"{SOURCE_ACCOUNT}\"\n  kms_key: alias/share\n"
    );
    match targets {
        [one] => {
            y.push_str("target:\n");
            for l in one.lines() {
                y.push_str(&format!("  {l}\n"));
            }
        }
        many => {
            y.push_str("targets:\n");
            for t in many {
                for (i, l) in t.lines().iter().enumerate() {
                    y.push_str(&format!("{}{l}\n", if i == 0 { "  - " } else { "    " }));
                }
            }
        }
    }
    y.push_str("volumes:\n");
    for n in 1..=volumes {
        y.push_str(&format!("  - id: vol-{n:017}\n"));
    }
    if !options.is_empty() {
        y.push_str("options:\n");
        y.push_str(options);
    }
    y
}

/// One target in another account and region, three volumes, tagged.
pub fn cross(name: &str) -> String {
    plan_text(name, &[DR], 3, OWNER_TAG)
}

/// Two targets in two accounts and regions (`DR`, `VAULT`) of `volumes` volumes.
pub fn fan_out(name: &str, volumes: usize, options: &str) -> String {
    plan_text(name, &[DR, VAULT], volumes, options)
}
