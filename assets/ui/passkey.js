// tollgate web UI: passkeys (WebAuthn) in the browser. Plain JavaScript, no build step, no
// inline script; served from /ui/assets/passkey.js. The server side is src/authn/passkey.rs.
//
// Contract (also in docs/DESIGN.md, "Passkeys"):
//
// Any element with a data-passkey attribute becomes a passkey control when clicked:
//
//   <button type="button" data-passkey="register"            (or "sign-in")
//           data-options-url="/ui/profile/passkeys/options"  (required)
//           data-finish-url="/ui/profile/passkeys"           (required)
//           data-csrf-token="…"                              (else <meta name="csrf-token">)
//           data-csrf-header="x-csrf-token"                  (the default)
//           data-name-input="#passkey-name"                  (register: the passkey's name)
//           data-username-input="#username"                  (sign-in: optional username)
//           data-status="#passkey-status"                    (where messages go)
//           data-redirect="/ui/keys">                        (after success, when the answer
//                                                             names no redirect)
//
// 1. POST data-options-url, JSON body: register `{}`; sign-in `{"username": "…"}` when the
//    username input has a value, else `{}`. Answer 200 with the options JSON:
//    `{"publicKey": PublicKeyCredentialCreationOptionsJSON}` (register) or
//    `{"publicKey": PublicKeyCredentialRequestOptionsJSON}` (sign-in); binary members
//    (challenge, user.id, excludeCredentials[].id, allowCredentials[].id) are base64url.
// 2. navigator.credentials.create / get with them.
// 3. POST data-finish-url, JSON body: register `{"credential": RegistrationResponseJSON,
//    "name": "…"}`; sign-in `{"credential": AuthenticationResponseJSON}`; binary members
//    base64url (no padding). Answer 2xx, optionally JSON `{"redirect": "/ui/…"}`.
// Both POSTs are same-origin, with the CSRF token in the data-csrf-header header.
// An error answer is shown from its JSON `{"error": {"message": "…"}}`, else its text.
//
// After success the element receives a cancelable "passkey:success" event (detail: the
// finish answer's JSON, or null); unless a listener calls preventDefault(), the page goes
// to the answer's redirect, else data-redirect, else reloads. Failures are shown in the
// data-status element (else with alert()) and dispatched as "passkey:error" (detail:
// {message}). While a ceremony runs the element is disabled and has aria-busy="true".
(function () {
  "use strict";

  // ---- base64url <-> ArrayBuffer ----------------------------------------------------------

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < bytes.length; i++) {
      text += String.fromCharCode(bytes[i]);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(text) {
    if (typeof text !== "string" || !/^[A-Za-z0-9_-]*=*$/.test(text)) {
      throw new PasskeyFailure("The server sent passkey options that are not base64url.");
    }
    var base64 = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4 !== 0) {
      base64 += "=";
    }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  // ---- messages ---------------------------------------------------------------------------

  function PasskeyFailure(message) {
    this.message = message;
  }

  var MESSAGES = {
    unsupported: "This browser does not support passkeys. Sign in with your password instead, or use a browser that supports passkeys.",
    insecure: "Passkeys need a secure connection: open this page over https.",
    cancelled: "The passkey request was cancelled or timed out. Try again when you are ready.",
    exists: "This authenticator already holds a passkey for your account.",
    security: "This site's address does not match its passkey settings (relying party id); ask an administrator.",
    network: "The server could not be reached. Check your connection and try again.",
  };

  function supported() {
    return (
      typeof window.PublicKeyCredential === "function" &&
      typeof navigator.credentials === "object" &&
      navigator.credentials !== null &&
      typeof navigator.credentials.create === "function" &&
      typeof navigator.credentials.get === "function"
    );
  }

  // What a WebAuthn DOMException means to a person.
  function explain(error, ceremony) {
    if (error instanceof PasskeyFailure) {
      return error.message;
    }
    var name = error && error.name;
    if (name === "NotAllowedError" || name === "AbortError") {
      return MESSAGES.cancelled;
    }
    if (name === "InvalidStateError" && ceremony === "register") {
      return MESSAGES.exists;
    }
    if (name === "SecurityError") {
      return MESSAGES.security;
    }
    if (name === "NotSupportedError") {
      return "This authenticator supports none of the signature algorithms the server accepts.";
    }
    if (name === "TypeError" && error.message && /fetch/i.test(error.message)) {
      return MESSAGES.network;
    }
    return "The passkey could not be used: " + (error && error.message ? error.message : String(error));
  }

  function show(element, message, failed) {
    var selector = element.getAttribute("data-status");
    var target = selector ? document.querySelector(selector) : null;
    if (target) {
      target.textContent = message;
      target.setAttribute("role", failed ? "alert" : "status");
      target.setAttribute("data-state", failed ? "error" : "ok");
    } else if (failed) {
      window.alert(message);
    }
  }

  // ---- talking to the server ----------------------------------------------------------------

  function csrfToken(element) {
    var token = element.getAttribute("data-csrf-token");
    if (token) {
      return token;
    }
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : null;
  }

  function post(element, url, body) {
    var headers = { "content-type": "application/json", accept: "application/json" };
    var token = csrfToken(element);
    if (token) {
      headers[element.getAttribute("data-csrf-header") || "x-csrf-token"] = token;
    }
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: headers,
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.text().then(function (text) {
        var json = null;
        try {
          json = text ? JSON.parse(text) : null;
        } catch (ignored) {
          json = null;
        }
        if (!response.ok) {
          var message =
            json && json.error && json.error.message
              ? json.error.message
              : text || "The server answered " + response.status + ".";
          throw new PasskeyFailure(message);
        }
        return json;
      });
    });
  }

  function required(element, name) {
    var value = element.getAttribute(name);
    if (!value) {
      throw new PasskeyFailure("This page's passkey control has no " + name + ".");
    }
    return value;
  }

  function inputValue(element, attribute) {
    var selector = element.getAttribute(attribute);
    var input = selector ? document.querySelector(selector) : null;
    return input && typeof input.value === "string" ? input.value.trim() : "";
  }

  // ---- options in, credentials out ----------------------------------------------------------

  function descriptors(list) {
    return (list || []).map(function (d) {
      var out = { type: d.type || "public-key", id: fromBase64url(d.id) };
      if (d.transports) {
        out.transports = d.transports;
      }
      return out;
    });
  }

  function creationOptions(json) {
    var o = json && json.publicKey;
    if (!o || !o.challenge || !o.user) {
      throw new PasskeyFailure("The server sent no passkey options.");
    }
    var options = Object.assign({}, o);
    options.challenge = fromBase64url(o.challenge);
    options.user = Object.assign({}, o.user, { id: fromBase64url(o.user.id) });
    options.excludeCredentials = descriptors(o.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var o = json && json.publicKey;
    if (!o || !o.challenge) {
      throw new PasskeyFailure("The server sent no passkey options.");
    }
    var options = Object.assign({}, o);
    options.challenge = fromBase64url(o.challenge);
    options.allowCredentials = descriptors(o.allowCredentials);
    return options;
  }

  function extensionResults(credential) {
    try {
      return credential.getClientExtensionResults() || {};
    } catch (ignored) {
      return {};
    }
  }

  function registrationJSON(credential) {
    var response = credential.response;
    var transports = [];
    if (typeof response.getTransports === "function") {
      try {
        transports = response.getTransports() || [];
      } catch (ignored) {
        transports = [];
      }
    }
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        attestationObject: toBase64url(response.attestationObject),
        transports: transports,
      },
      clientExtensionResults: extensionResults(credential),
    };
  }

  function authenticationJSON(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        authenticatorData: toBase64url(response.authenticatorData),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : null,
      },
      clientExtensionResults: extensionResults(credential),
    };
  }

  // ---- the two ceremonies --------------------------------------------------------------------

  function register(element) {
    var optionsUrl = required(element, "data-options-url");
    var finishUrl = required(element, "data-finish-url");
    return post(element, optionsUrl, {})
      .then(function (json) {
        return navigator.credentials.create({ publicKey: creationOptions(json) });
      })
      .then(function (credential) {
        if (!credential) {
          throw new PasskeyFailure(MESSAGES.cancelled);
        }
        var body = { credential: registrationJSON(credential) };
        var name = inputValue(element, "data-name-input");
        if (name) {
          body.name = name;
        }
        return post(element, finishUrl, body);
      });
  }

  function signIn(element) {
    var optionsUrl = required(element, "data-options-url");
    var finishUrl = required(element, "data-finish-url");
    var username = inputValue(element, "data-username-input");
    return post(element, optionsUrl, username ? { username: username } : {})
      .then(function (json) {
        return navigator.credentials.get({ publicKey: requestOptions(json) });
      })
      .then(function (credential) {
        if (!credential) {
          throw new PasskeyFailure(MESSAGES.cancelled);
        }
        return post(element, finishUrl, { credential: authenticationJSON(credential) });
      });
  }

  function run(element) {
    var ceremony = element.getAttribute("data-passkey");
    if (ceremony !== "register" && ceremony !== "sign-in") {
      return Promise.resolve();
    }
    if (!window.isSecureContext) {
      return Promise.reject(new PasskeyFailure(MESSAGES.insecure));
    }
    if (!supported()) {
      return Promise.reject(new PasskeyFailure(MESSAGES.unsupported));
    }
    return ceremony === "register" ? register(element) : signIn(element);
  }

  function onClick(event) {
    var element = event.currentTarget;
    event.preventDefault();
    if (element.getAttribute("aria-busy") === "true") {
      return;
    }
    var ceremony = element.getAttribute("data-passkey");
    element.setAttribute("aria-busy", "true");
    element.disabled = true;
    show(element, ceremony === "register" ? "Waiting for your authenticator…" : "Waiting for your passkey…", false);
    var settled;
    try {
      settled = run(element);
    } catch (error) {
      settled = Promise.reject(error);
    }
    settled
      .then(function (answer) {
        show(element, ceremony === "register" ? "Passkey added." : "Signed in.", false);
        var proceed = element.dispatchEvent(
          new CustomEvent("passkey:success", { detail: answer || null, bubbles: true, cancelable: true })
        );
        if (proceed) {
          var target = (answer && answer.redirect) || element.getAttribute("data-redirect");
          if (target) {
            window.location.assign(target);
          } else {
            window.location.reload();
          }
        }
      })
      .catch(function (error) {
        var message = explain(error, ceremony);
        show(element, message, true);
        element.dispatchEvent(new CustomEvent("passkey:error", { detail: { message: message }, bubbles: true }));
      })
      .then(function () {
        element.removeAttribute("aria-busy");
        element.disabled = false;
      });
  }

  function attach(root) {
    var elements = (root || document).querySelectorAll("[data-passkey]");
    for (var i = 0; i < elements.length; i++) {
      if (!elements[i].hasAttribute("data-passkey-ready")) {
        elements[i].setAttribute("data-passkey-ready", "");
        elements[i].addEventListener("click", onClick);
      }
    }
  }

  window.tollgatePasskey = {
    attach: attach,
    supported: supported,
    toBase64url: toBase64url,
    fromBase64url: fromBase64url,
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      attach(document);
    });
  } else {
    attach(document);
  }
})();
