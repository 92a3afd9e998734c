// Prelude of every script thunderbird/drive.py runs in Thunderbird's chrome context through Marionette.
// drive.py appends the step's body as `async function step(args) { ... }`; the value it returns (or the
// error it throws) goes back to Python as {ok, value} / {ok: false, error}.
/* global arguments */
const resolve = arguments[arguments.length - 1];
const args = arguments[0];
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const { CardDAVUtils } = ChromeUtils.importESModule("resource:///modules/CardDAVUtils.sys.mjs");
const { CardDAVDirectory } = ChromeUtils.importESModule("resource:///modules/CardDAVDirectory.sys.mjs");
const { AddrBookCard } = ChromeUtils.importESModule("resource:///modules/AddrBookCard.sys.mjs");
const { setTimeout, clearTimeout } = ChromeUtils.importESModule("resource://gre/modules/Timer.sys.mjs");

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function waitFor(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await condition();
    if (value) {
      return value;
    }
    await sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

// Resolves when `topic` is notified for the directory with UID `dirUID()`, rejects after ms.
function observeOnce(topic, dirUID, ms = 30000) {
  return new Promise((res, rej) => {
    const observer = {
      observe(subject) {
        let uid;
        try {
          uid = subject.QueryInterface(Ci.nsIAbDirectory).UID;
        } catch (e) {
          return;
        }
        if (uid == dirUID()) {
          Services.obs.removeObserver(observer, topic);
          clearTimeout(timer);
          res(subject);
        }
      },
    };
    const timer = setTimeout(() => {
      Services.obs.removeObserver(observer, topic);
      rej(new Error(`timed out after ${ms} ms waiting for ${topic}`));
    }, ms);
    Services.obs.addObserver(observer, topic);
  });
}

// The JS object (not the XPCOM wrapper) of the CardDAV directory created in the discovery step.
function getDir() {
  const wrapped = MailServices.ab.getDirectoryFromUID(args.dirUID);
  if (!wrapped) {
    throw new Error(`no directory with UID ${args.dirUID}`);
  }
  const dir = CardDAVDirectory.forFile(wrapped.fileName);
  if (!dir) {
    throw new Error(`directory ${wrapped.dirName} is not a CardDAV directory`);
  }
  return dir;
}

function cardInfo(card) {
  return {
    uid: card.UID,
    fn: card.displayName,
    email: card.primaryEmail,
    href: card.getProperty("_href", ""),
    etag: card.getProperty("_etag", ""),
    vcard: card.getProperty("_vCard", ""),
  };
}

// What Thunderbird has now: its cards and its stored sync token.
function snapshot(dir) {
  return { token: dir._syncToken, cards: dir.childCards.map(cardInfo) };
}

step(args).then(
  value => resolve({ ok: true, value }),
  e => resolve({ ok: false, error: `${e}${e && e.stack ? "\n" + e.stack : ""}` })
);
