{{/*
Checks of the values as a whole, before anything is rendered. Every template file starts with
{{- include "mercato.validate" . }}: whichever Helm renders first fails with the complete list
(every missing value and every missing operator), not with the first problem it meets.
*/}}

{{/* Required values without a usable default, and combinations that cannot work, one line each
(JSON list). */}}
{{- define "mercato.values.problems" -}}
{{- $v := .Values -}}
{{- $root := . -}}
{{- $problems := list -}}
{{- $enabled := include "mercato.enabledComponents" . | fromJsonArray -}}
{{- $kafka := false -}}
{{- $redis := false -}}
{{- $payments := false -}}
{{- range $name := $enabled -}}
{{- $c := include "mercato.component" (dict "root" $root "name" $name) | fromYaml -}}
{{- if $c.kafka.bootstrapEnv -}}
{{- $kafka = true -}}
{{- end -}}
{{- if $c.redis.urlEnv -}}
{{- $redis = true -}}
{{- end -}}
{{- if $c.paymentsEnv -}}
{{- $payments = true -}}
{{- end -}}
{{- end -}}
{{- if not $v.config.tokenIssuer -}}
{{- $problems = append $problems "config.tokenIssuer is required: the gateway's public URL (e.g. https://api.example.com); auth signs it into access tokens and every service checks it" -}}
{{- end -}}
{{- if and $kafka (not $v.kafka.strimzi.enabled) (not $v.kafka.bootstrapServers) -}}
{{- $problems = append $problems "kafka.bootstrapServers is required: the bootstrap servers of your Kafka (host:port, comma separated), unless kafka.strimzi.enabled renders a Kafka cluster with the Strimzi operator" -}}
{{- end -}}
{{- if and $payments (not $v.payments.provider) -}}
{{- $problems = append $problems "payments.provider is required: `stripe` (Stripe PaymentIntents, with payments.stripe.existingSecret), or `dev`, which approves the test token tok_test_ok and moves no money (payments.development=true for development or tests)" -}}
{{- end -}}
{{- if and $payments (eq $v.payments.provider "stripe") (not $v.payments.stripe.existingSecret) -}}
{{- $problems = append $problems "payments.stripe.existingSecret is required with payments.provider stripe: a Secret holding the Stripe API key and the webhook signing secret (keys payments.stripe.apiKeyKey and webhookSecretKey)" -}}
{{- end -}}
{{- $security := $v.kafka.security -}}
{{- if and $kafka (hasPrefix "SASL_" $security.protocol) (not $security.sasl.existingSecret) -}}
{{- $problems = append $problems (printf "kafka.security.sasl.existingSecret is required with kafka.security.protocol %s: a Secret holding the SASL username and password (keys kafka.security.sasl.usernameKey and passwordKey)" $security.protocol) -}}
{{- end -}}
{{- if and (not (has $security.protocol (list "SSL" "SASL_SSL"))) (or $security.tls.caSecret $security.tls.clientCertSecret) -}}
{{- $problems = append $problems (printf "kafka.security.tls secrets are set but kafka.security.protocol is %s: TLS needs SSL or SASL_SSL" $security.protocol) -}}
{{- end -}}
{{- if and $v.kafka.strimzi.enabled (ne $security.protocol "PLAINTEXT") -}}
{{- $problems = append $problems "kafka.security is for an external Kafka: the chart's Strimzi cluster (kafka.strimzi.enabled) has a plain listener inside the cluster" -}}
{{- end -}}
{{- if and $v.keda.enabled (ne $security.protocol "PLAINTEXT") (not $v.keda.authenticationRef) -}}
{{- $problems = append $problems "keda.authenticationRef is required with kafka.security: a KEDA TriggerAuthentication giving the Kafka scaler the same TLS and SASL settings (sasl, username, password, tls, ca)" -}}
{{- end -}}
{{- if and $redis (not $v.redis.url) (not $v.redis.existingSecret) -}}
{{- $problems = append $problems "redis.url (or redis.existingSecret, a Secret holding it) is required: the Redis of the access-token revocation list, the gateway's rate limits and the catalog's cache, e.g. redis://redis-master.redis.svc:6379/0" -}}
{{- end -}}
{{- if and (has "gateway" $enabled) $v.ingress.enabled -}}
{{- if not $v.ingress.host -}}
{{- $problems = append $problems "ingress.host is required with ingress.enabled: the public host name of the API" -}}
{{- end -}}
{{- if and $v.ingress.tls.enabled (not $v.ingress.tls.secretName) (not $v.certManager.issuerRef.name) -}}
{{- $problems = append $problems "ingress.tls.enabled needs a certificate: set ingress.tls.secretName to an existing kubernetes.io/tls Secret, or certManager.issuerRef.name to the cert-manager issuer that creates it (or ingress.tls.enabled=false when TLS ends in front of the Ingress)" -}}
{{- end -}}
{{- end -}}
{{- toJson $problems -}}
{{- end -}}

{{/* Fails with every problem of the values and every missing operator; renders nothing when all
is well. */}}
{{- define "mercato.validate" -}}
{{- $problems := include "mercato.values.problems" . | fromJsonArray -}}
{{- $missing := include "mercato.api.missing" . | fromJsonArray -}}
{{- $text := list -}}
{{- if $problems -}}
{{- $text = append $text (printf "values to set:\n  - %s" (join "\n  - " $problems)) -}}
{{- end -}}
{{- if $missing -}}
{{- $text = append $text (printf "features whose operator is not installed:\n  - %s\nInstall each operator (its CRDs) first, or turn the feature off. Rendering without a cluster? Pass the APIs with `helm template --api-versions group/version/Kind` (or the value extraApiVersions)." (join "\n  - " $missing)) -}}
{{- end -}}
{{- if $text -}}
{{- fail (printf "\n%s\n(docs/deploy.md: \"Values a platform team must set\", \"Optional APIs\")" (join "\n" $text)) -}}
{{- end -}}
{{- end -}}
