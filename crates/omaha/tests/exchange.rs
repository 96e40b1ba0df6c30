//! The exchange of updates.md §4.4 (a 2015 client on 766.4.0, EC2 OEM; stable 1122.2.0's
//! real published numbers), update_engine's strictness (§4.3), and hostile input.
#![allow(clippy::unwrap_used, clippy::panic)]

use omaha::codes::{ErrorCode, EventResult, EventType};
use omaha::{
    App, AppAnswer, CheckResponse, Error, Event, InstallSource, Offer, Os, Package, Request,
    Response, UpdateCheck,
};
use proptest::prelude::*;

fn check_request() -> Request {
    Request {
        updater: "CoreOSUpdateEngine-0.1.0.0".into(),
        install_source: InstallSource::Scheduler,
        os: Os {
            version: "Chateau".into(),
            platform: "CoreOS".into(),
            sp: "766.4.0_x86_64".into(),
        },
        apps: vec![App {
            appid: "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into(),
            version: "766.4.0".into(),
            track: "stable".into(),
            bootid: "{6e1b4f0a-2c8e-4f0e-9a55-0f4c2b2f6c11}".into(),
            oem: "ec2".into(),
            oem_version: "0.0.4".into(),
            aleph_version: "717.3.0".into(),
            machine_id: "69d27b356a94476da859461d3a3bc6fd".into(),
            lang: "en-US".into(),
            board: "amd64-usr".into(),
            ping: true,
            update_check: true,
            events: vec![Event {
                previous_version: Some(String::new()),
                ..Event::new(EventType::UpdateComplete, EventResult::SuccessReboot)
            }],
        }],
    }
}

const CHECK_REQUEST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="CoreOSUpdateEngine-0.1.0.0" updaterversion="CoreOSUpdateEngine-0.1.0.0" installsource="scheduler" ismachine="1">
    <os version="Chateau" platform="CoreOS" sp="766.4.0_x86_64"></os>
    <app appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}" version="766.4.0" track="stable" bootid="{6e1b4f0a-2c8e-4f0e-9a55-0f4c2b2f6c11}" oem="ec2" oemversion="0.0.4" alephversion="717.3.0" machineid="69d27b356a94476da859461d3a3bc6fd" lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false" >
        <ping active="1"></ping>
        <updatecheck></updatecheck>
        <event eventtype="3" eventresult="2" previousversion=""></event>
    </app>
</request>
"#;

const NO_UPDATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<response protocol="3.0" server="update.core-os.net">
 <daystart elapsed_seconds="0"></daystart>
 <app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok">
  <updatecheck status="noupdate"></updatecheck>
 </app>
</response>
"#;

const UPDATE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<response protocol="3.0" server="update.core-os.net">
 <daystart elapsed_seconds="0"></daystart>
 <app appid="e96281a6-d1af-4bde-9a0a-97b76e56dc57" status="ok">
  <updatecheck status="ok">
   <urls>
    <url codebase="https://update.release.core-os.net/amd64-usr/1122.2.0/"></url>
   </urls>
   <manifest version="1122.2.0">
    <packages>
     <package hash="+ZFmPWzv1OdfmKHaGSojbK5Xj3k=" name="update.gz" size="212555113" required="false"></package>
    </packages>
    <actions>
     <action event="postinstall" ChromeOSVersion="" sha256="cSBzKN0c6vKinrH0SdqUZSHlQtCa90vmeKC7p/xk19M=" needsadmin="false" IsDelta="false" DisablePayloadBackoff="true"></action>
    </actions>
   </manifest>
  </updatecheck>
 </app>
</response>
"#;

fn offer_1122() -> Offer {
    Offer {
        urls: vec!["https://update.release.core-os.net/amd64-usr/1122.2.0/".into()],
        version: "1122.2.0".into(),
        package: Package {
            name: "update.gz".into(),
            size: 212_555_113,
            sha1_base64: "+ZFmPWzv1OdfmKHaGSojbK5Xj3k=".into(),
        },
        sha256_base64: "cSBzKN0c6vKinrH0SdqUZSHlQtCa90vmeKC7p/xk19M=".into(),
        disable_payload_backoff: true,
    }
}

#[test]
fn the_update_check_is_written_as_update_engine_wrote_it() {
    assert_eq!(check_request().to_xml(), CHECK_REQUEST);
    assert_eq!(Request::parse(CHECK_REQUEST).unwrap(), check_request());
}

#[test]
fn events_carry_an_error_code_only_when_they_are_not_a_success() {
    let mut r = check_request();
    let app = &mut r.apps[0];
    app.ping = false;
    app.update_check = false;
    app.events = vec![
        Event::new(EventType::DownloadStarted, EventResult::Success),
        Event {
            error_code: Some(
                ErrorCode::PayloadHashMismatch.code() | omaha::codes::FLAG_TEST_OMAHA_URL,
            ),
            ..Event::new(EventType::UpdateComplete, EventResult::Error)
        },
        Event {
            error_code: Some(7),
            ..Event::new(EventType::UpdateComplete, EventResult::Success)
        },
    ];
    let xml = r.to_xml();
    assert!(xml.contains("        <event eventtype=\"13\" eventresult=\"1\"></event>\n"));
    assert!(xml.contains(
        "        <event eventtype=\"3\" eventresult=\"0\" errorcode=\"268435466\"></event>\n"
    ));
    assert!(xml.contains("        <event eventtype=\"3\" eventresult=\"1\"></event>\n"));
    assert!(!xml.contains("<ping") && !xml.contains("<updatecheck"));
}

#[test]
fn responses_are_read_as_update_engine_read_them() {
    let none = CheckResponse::parse(NO_UPDATE).unwrap();
    assert_eq!(none.check, UpdateCheck::NoUpdate);
    assert_eq!(none.poll_interval, None);
    let update = CheckResponse::parse(UPDATE).unwrap();
    let UpdateCheck::Update(offer) = update.check else {
        panic!("no offer")
    };
    assert_eq!(offer, offer_1122());
    assert_eq!(
        offer.payload_urls(),
        ["https://update.release.core-os.net/amd64-usr/1122.2.0/update.gz"]
    );
}

/// Each thing update_engine requires, taken away: error 34; an empty body 30; not XML 31.
#[test]
fn what_is_missing_is_named_with_update_engines_code() {
    for (from, to, what) in [
        ("<updatecheck status=\"ok\">", "<updatecheck>", "no status"),
        (
            "status=\"ok\">\n   <urls>",
            "status=\"later\">\n   <urls>",
            "an unknown status",
        ),
        (
            "<url codebase=\"https://update.release.core-os.net/amd64-usr/1122.2.0/\"></url>",
            "",
            "no URL",
        ),
        (
            "codebase=\"https://update.release.core-os.net/amd64-usr/1122.2.0/\"",
            "codebase=\"\"",
            "an empty URL",
        ),
        ("size=\"212555113\"", "size=\"0\"", "size 0"),
        ("size=\"212555113\"", "size=\"-1\"", "a negative size"),
        ("name=\"update.gz\" ", "", "no package name"),
        (
            "event=\"postinstall\"",
            "event=\"install\"",
            "no postinstall action",
        ),
        (
            "sha256=\"cSBzKN0c6vKinrH0SdqUZSHlQtCa90vmeKC7p/xk19M=\"",
            "",
            "no sha256",
        ),
        (
            "<manifest version=\"1122.2.0\">",
            "<manifesto>",
            "no manifest",
        ),
        ("<response ", "<reply ", "another root"),
    ] {
        let doc = UPDATE
            .replace(from, to)
            .replace(
                "</manifest>",
                if to == "<manifesto>" {
                    "</manifesto>"
                } else {
                    "</manifest>"
                },
            )
            .replace(
                "</response>",
                if to == "<reply " {
                    "</reply>"
                } else {
                    "</response>"
                },
            );
        assert_ne!(doc, UPDATE, "{what}: the test did not change the document");
        let err = CheckResponse::parse(&doc).unwrap_err();
        assert_eq!(err.code(), ErrorCode::OmahaResponseInvalid, "{what}: {err}");
    }
    assert_eq!(
        CheckResponse::parse("").unwrap_err().code(),
        ErrorCode::OmahaRequestEmptyResponse
    );
    assert_eq!(
        CheckResponse::parse("<html>502 Bad Gateway")
            .unwrap_err()
            .code(),
        ErrorCode::OmahaRequestXmlParseError
    );
    // What update_engine ignores, Ferrite ignores: app and ping status, daystart, the
    // package hash, unknown attributes and elements.
    let doc = UPDATE
        .replace(
            "status=\"ok\">\n  <updatecheck",
            "status=\"restricted\">\n  <ping status=\"x\"/>\n  <updatecheck",
        )
        .replace(
            "hash=\"+ZFmPWzv1OdfmKHaGSojbK5Xj3k=\"",
            "hash=\"\" extra=\"1\"",
        )
        .replace(
            "<daystart elapsed_seconds=\"0\">",
            "<daystart elapsed_seconds=\"x\"><future/>",
        );
    assert!(matches!(
        CheckResponse::parse(&doc).unwrap().check,
        UpdateCheck::Update(_)
    ));
}

#[test]
fn a_servers_response_reads_back_as_the_offer_it_carries() {
    let r = Response {
        server: "ferrite".into(),
        apps: vec![(
            "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}".into(),
            AppAnswer::Ok {
                check: Some(UpdateCheck::Update(offer_1122())),
                poll_interval: Some(5),
                events: 1,
                ping: true,
            },
        )],
    };
    let back = CheckResponse::parse(&r.to_xml()).unwrap();
    assert_eq!(back.check, UpdateCheck::Update(offer_1122()));
    assert_eq!(back.poll_interval, Some(5));
    let unknown = Response {
        server: "ferrite".into(),
        apps: vec![("{x}".into(), AppAnswer::Unknown)],
    };
    assert!(unknown
        .to_xml()
        .contains("<app appid=\"{x}\" status=\"error-unknownApplication\"></app>"));
    assert!(matches!(
        CheckResponse::parse(&unknown.to_xml()),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn servers_refuse_requests_they_cannot_serve() {
    for (doc, want) in [
        (
            CHECK_REQUEST.replace("protocol=\"3.0\"", "protocol=\"2.0\""),
            "protocol",
        ),
        (
            CHECK_REQUEST.replace("appid=\"{e96281a6-d1af-4bde-9a0a-97b76e56dc57}\"", ""),
            "appid",
        ),
        (
            CHECK_REQUEST.replace("eventresult=\"2\"", "eventresult=\"two\""),
            "not a number",
        ),
        (
            "<?xml version=\"1.0\"?><request protocol=\"3.0\"></request>".to_string(),
            "no <app>",
        ),
    ] {
        let err = Request::parse(&doc).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

fn arb_text() -> impl Strategy<Value = String> {
    "[ -~\u{e9}\u{4e2d}<>&\"']{0,24}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        let _ = Request::parse(&s);
        let _ = CheckResponse::parse(&s);
    }

    #[test]
    fn mangled_documents_never_panic(cut in 0usize..1200, len in 0usize..64, insert in "[<>&/\"'=a-z ]{0,8}") {
        for doc in [CHECK_REQUEST, UPDATE, NO_UPDATE] {
            let mut bytes: Vec<char> = doc.chars().collect();
            let at = cut.min(bytes.len());
            let end = (at + len).min(bytes.len());
            bytes.splice(at..end, insert.chars());
            let s: String = bytes.into_iter().collect();
            let _ = Request::parse(&s);
            let _ = CheckResponse::parse(&s);
        }
    }

    #[test]
    fn any_values_survive_writing_and_reading(
        version in arb_text(), track in arb_text(), machine in arb_text(), prev in arb_text(),
    ) {
        let mut r = check_request();
        r.apps[0].version = version;
        r.apps[0].track = track;
        r.apps[0].machine_id = machine;
        r.apps[0].events[0].previous_version = Some(prev);
        prop_assert_eq!(Request::parse(&r.to_xml()).unwrap(), r);
    }
}
