{{/*
Names and labels, in the manner of bitnami/common (_names.tpl, _labels.tpl).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "mercato.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "mercato.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource: fullnameOverride, else <release>-<name> (or the
release name when it already contains the name). Kept short so suffixes fit in 63 chars. */}}
{{- define "mercato.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's resources: (dict "root" $ "name" "auth"). */}}
{{- define "mercato.componentName" -}}
{{- printf "%s-%s" (include "mercato.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource (bitnami common.labels.standard). */}}
{{- define "mercato.labels" -}}
app.kubernetes.io/name: {{ include "mercato.name" . }}
helm.sh/chart: {{ include "mercato.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mercato
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels (bitnami common.labels.matchLabels). */}}
{{- define "mercato.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mercato.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component's resources: (dict "root" $ "name" "auth"). */}}
{{- define "mercato.componentLabels" -}}
{{ include "mercato.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Selector labels of a component's pods: (dict "root" $ "name" "auth"). */}}
{{- define "mercato.componentSelectorLabels" -}}
{{ include "mercato.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* metadata.annotations of every resource, with extra ones: (dict "root" $ "extra" map);
indented for `metadata:` of a top-level resource, called as {{- include ... }}. */}}
{{- define "mercato.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy .root.Values.commonAnnotations) -}}
{{- if $all }}
  annotations:
    {{- toYaml $all | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
Components
*/}}

{{/* Deep merge of two maps where `override` wins, false and 0 included (sprig's
mergeOverwrite keeps the base's value when the override is false or empty). Lists replace.
(dict "base" map "override" map) → YAML. */}}
{{- define "mercato.util.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .override -}}
{{- $current := index $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "mercato.util.merge" (dict "base" $current "override" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* A component's values: componentDefaults merged with components.<name>, as YAML.
(dict "root" $ "name" "auth"). */}}
{{- define "mercato.component" -}}
{{- $values := index .root.Values.components .name -}}
{{- if not $values -}}
{{- fail (printf "unknown component %q" .name) -}}
{{- end -}}
{{- include "mercato.util.merge" (dict "base" .root.Values.componentDefaults "override" $values) -}}
{{- end -}}

{{/* Names of the enabled components, sorted, as a JSON list. */}}
{{- define "mercato.enabledComponents" -}}
{{- $names := list -}}
{{- range $name := keys .Values.components | sortAlpha -}}
{{- $c := include "mercato.component" (dict "root" $ "name" $name) | fromYaml -}}
{{- if $c.enabled -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Components that call `name` (the inverse of `calls`), sorted, as a JSON list.
(dict "root" $ "name" "catalog"). */}}
{{- define "mercato.callers" -}}
{{- $callers := list -}}
{{- $root := .root -}}
{{- $target := .name -}}
{{- range $name := include "mercato.enabledComponents" $root | fromJsonArray -}}
{{- $c := include "mercato.component" (dict "root" $root "name" $name) | fromYaml -}}
{{- if has $target $c.calls -}}
{{- $callers = append $callers $name -}}
{{- end -}}
{{- end -}}
{{- toJson $callers -}}
{{- end -}}

{{/* The image of a component: (dict "root" $ "c" component). Registry: global.imageRegistry (an
umbrella chart's), else image.registry; tag: the component's, else image.tag, else the chart's
appVersion. */}}
{{- define "mercato.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .root.Values.image.registry | trimSuffix "/" -}}
{{- $repository := .c.image.repository -}}
{{- $tag := .c.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image tags must be pinned: `latest` is refused" -}}
{{- end -}}
{{- $name := ternary (printf "%s/%s" $registry $repository) $repository (ne $registry "") -}}
{{- if .c.image.digest -}}
{{- printf "%s:%s@%s" $name $tag .c.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of a pod spec (global.imagePullSecrets, then imagePullSecrets; each a name
or {name: ...}), indented for `spec:` of a pod; renders nothing when there is none. */}}
{{- define "mercato.imagePullSecrets" -}}
{{- $names := list -}}
{{- range concat (.Values.global.imagePullSecrets | default list) (.Values.imagePullSecrets | default list) -}}
{{- $name := . -}}
{{- if kindIs "map" . -}}
{{- $name = .name -}}
{{- end -}}
{{- if and $name (not (has $name $names)) -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- if $names }}
imagePullSecrets:
  {{- range $names }}
  - name: {{ . }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* A Secret name from the values, rendered with `tpl` (so the defaults can carry the release's
full name): (dict "root" $ "name" value). */}}
{{- define "mercato.secretName" -}}
{{- tpl (toString .name) .root -}}
{{- end -}}

{{/* The name of a component's ServiceAccount: (dict "root" $ "name" "auth" "c" component). */}}
{{- define "mercato.serviceAccountName" -}}
{{- if .c.serviceAccount.create -}}
{{- .c.serviceAccount.name | default (include "mercato.componentName" .) -}}
{{- else -}}
{{- .c.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* In-cluster DNS name of a component's Service: (dict "root" $ "name" "auth"). */}}
{{- define "mercato.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "mercato.componentName" .) .root.Release.Namespace .root.Values.config.clusterDomain -}}
{{- end -}}

{{/* gRPC target of a component for its clients: (dict "root" $ "name" "auth"). Without a mesh,
the headless Service through gRPC's DNS resolver (clients balance round robin over the pods);
with a mesh, the ClusterIP Service (the proxies balance per request; Linkerd's routes do not
apply to headless Services). */}}
{{- define "mercato.grpcTarget" -}}
{{- $c := include "mercato.component" . | fromYaml -}}
{{- $name := include "mercato.componentName" . -}}
{{- if eq .root.Values.mesh.provider "none" -}}
{{- printf "dns:///%s-headless.%s.svc.%s:%v" $name .root.Release.Namespace .root.Values.config.clusterDomain $c.ports.app -}}
{{- else -}}
{{- printf "%s:%v" (include "mercato.serviceHost" .) $c.ports.app -}}
{{- end -}}
{{- end -}}

{{/*
Datastores
*/}}

{{/* Kafka bootstrap servers: the chart's Strimzi cluster or the external one. */}}
{{- define "mercato.kafka.bootstrap" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- printf "%s-kafka-bootstrap:9092" (include "mercato.kafka.clusterName" .) -}}
{{- else -}}
{{- required "kafka.bootstrapServers is required: the external Kafka's bootstrap servers (host:port, comma separated), unless kafka.strimzi.enabled" .Values.kafka.bootstrapServers -}}
{{- end -}}
{{- end -}}

{{/* The kit's Kafka security settings of kafka.security (KAFKA_*, without a service prefix),
as YAML; the TLS files are where "mercato.kafka.security.mounts" puts them. */}}
{{- define "mercato.kafka.security.env" -}}
{{- $s := .Values.kafka.security -}}
{{- $env := dict "KAFKA_SECURITY_PROTOCOL" $s.protocol -}}
{{- if has $s.protocol (list "SSL" "SASL_SSL") -}}
{{- $_ := set $env "KAFKA_SSL_CHECK_HOSTNAME" (toString $s.tls.checkHostname) -}}
{{- if $s.tls.caSecret -}}
{{- $_ := set $env "KAFKA_SSL_CA_FILE" (printf "/etc/mercato/kafka/ca/%s" $s.tls.caKey) -}}
{{- end -}}
{{- if $s.tls.clientCertSecret -}}
{{- $_ := set $env "KAFKA_SSL_CERT_FILE" "/etc/mercato/kafka/client/tls.crt" -}}
{{- $_ := set $env "KAFKA_SSL_KEY_FILE" "/etc/mercato/kafka/client/tls.key" -}}
{{- end -}}
{{- end -}}
{{- if hasPrefix "SASL_" $s.protocol -}}
{{- $_ := set $env "KAFKA_SASL_MECHANISM" $s.sasl.mechanism -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* The SASL username and password from kafka.security.sasl.existingSecret, as a list of
EnvVar named with a prefix: (dict "root" $ "prefix" "MERCATO_AUTH_"). */}}
{{- define "mercato.kafka.security.secretEnv" -}}
{{- $s := .root.Values.kafka.security -}}
{{- $vars := list -}}
{{- if hasPrefix "SASL_" $s.protocol -}}
{{- $name := include "mercato.secretName" (dict "root" .root "name" $s.sasl.existingSecret) -}}
{{- $vars = append $vars (dict "name" (printf "%sKAFKA_SASL_USERNAME" .prefix) "valueFrom" (dict "secretKeyRef" (dict "name" $name "key" $s.sasl.usernameKey))) -}}
{{- $vars = append $vars (dict "name" (printf "%sKAFKA_SASL_PASSWORD" .prefix) "valueFrom" (dict "secretKeyRef" (dict "name" $name "key" $s.sasl.passwordKey))) -}}
{{- end -}}
{{- toYaml $vars -}}
{{- end -}}

{{/* The Secrets of kafka.security.tls as Volumes (a list, YAML). */}}
{{- define "mercato.kafka.security.volumes" -}}
{{- $s := .Values.kafka.security -}}
{{- $volumes := list -}}
{{- if has $s.protocol (list "SSL" "SASL_SSL") -}}
{{- if $s.tls.caSecret -}}
{{- $volumes = append $volumes (dict "name" "kafka-ca" "secret" (dict "secretName" (include "mercato.secretName" (dict "root" . "name" $s.tls.caSecret)) "defaultMode" 288)) -}}
{{- end -}}
{{- if $s.tls.clientCertSecret -}}
{{- $volumes = append $volumes (dict "name" "kafka-client" "secret" (dict "secretName" (include "mercato.secretName" (dict "root" . "name" $s.tls.clientCertSecret)) "defaultMode" 288)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $volumes -}}
{{- end -}}

{{/* Where those Volumes are mounted (a list of VolumeMount, YAML). */}}
{{- define "mercato.kafka.security.mounts" -}}
{{- $mounts := list -}}
{{- range include "mercato.kafka.security.volumes" . | fromYamlArray -}}
{{- $mounts = append $mounts (dict "name" .name "mountPath" (printf "/etc/mercato/kafka/%s" (trimPrefix "kafka-" .name)) "readOnly" true) -}}
{{- end -}}
{{- toYaml $mounts -}}
{{- end -}}

{{/* The prefix of this release's Kafka topic and consumer group names (kafka.prefix, rendered
with tpl; "" = the declared names as they are). */}}
{{- define "mercato.kafka.prefix" -}}
{{- tpl (toString .Values.kafka.prefix) . -}}
{{- end -}}

{{- define "mercato.kafka.clusterName" -}}
{{- printf "%s-kafka" (include "mercato.fullname" .) -}}
{{- end -}}

{{/* The Strimzi cluster KafkaTopics are declared for ("" = none). */}}
{{- define "mercato.kafka.topicCluster" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- include "mercato.kafka.clusterName" . -}}
{{- else -}}
{{- .Values.kafka.topics.strimziCluster -}}
{{- end -}}
{{- end -}}

{{/* The topic declarations (files/topics.yaml, shared with the local stack), with the
defaults applied, the replication cap of kafka.topics.maxReplicas and this release's prefix
(kafka.prefix), as JSON: [{name (prefixed), declared (as in the file), partitions, replicas,
config, consumers, producers}]. */}}
{{- define "mercato.topics" -}}
{{- $doc := .Files.Get "files/topics.yaml" | fromYaml -}}
{{- if ne (toString $doc.version) "1" -}}
{{- fail "files/topics.yaml: expected `version: 1`" -}}
{{- end -}}
{{- $defaults := $doc.defaults | default dict -}}
{{- $cap := int .Values.kafka.topics.maxReplicas -}}
{{- $prefix := include "mercato.kafka.prefix" . -}}
{{- $topics := list -}}
{{- range $doc.topics -}}
{{- $replicas := int (.replicas | default $defaults.replicas | default 1) -}}
{{- if and (gt $cap 0) (gt $replicas $cap) -}}
{{- $replicas = $cap -}}
{{- end -}}
{{- $config := merge (deepCopy (.config | default dict)) (deepCopy ($defaults.config | default dict)) -}}
{{- if hasKey $config "min.insync.replicas" -}}
{{- $min := int (index $config "min.insync.replicas") -}}
{{- if gt $min $replicas -}}
{{- $_ := set $config "min.insync.replicas" (toString $replicas) -}}
{{- end -}}
{{- end -}}
{{- $topics = append $topics (dict "name" (printf "%s%s" $prefix .name) "declared" .name "partitions" (int (.partitions | default $defaults.partitions | default 1)) "replicas" $replicas "config" $config "consumers" (.consumers | default list) "producers" (.producers | default list)) -}}
{{- end -}}
{{- toJson $topics -}}
{{- end -}}

{{/* The consumer group of a component: kafka.prefix + its kafka.consumerGroup, unless its env
sets the variable itself: (dict "root" $ "c" component). */}}
{{- define "mercato.kafka.consumerGroup" -}}
{{- $variable := printf "%s%s" .c.envPrefix .c.kafka.consumerGroupEnv -}}
{{- if hasKey .c.env $variable -}}
{{- index .c.env $variable | toString -}}
{{- else -}}
{{- printf "%s%s" (include "mercato.kafka.prefix" .root) .c.kafka.consumerGroup -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart renders the database of a component: (dict "root" $ "c" component). */}}
{{- define "mercato.database.managed" -}}
{{- if and (eq .c.database.kind "postgres") .root.Values.cnpg.enabled -}}
true
{{- else if and (eq .c.database.kind "mongodb") .root.Values.mongodb.operator.enabled -}}
true
{{- end -}}
{{- end -}}

{{/* Secret and key holding a component's database URL, as JSON {name, key}:
(dict "root" $ "name" "auth" "c" component). */}}
{{- define "mercato.database.secret" -}}
{{- $root := .root -}}
{{- if and (eq .c.database.kind "postgres") $root.Values.cnpg.enabled -}}
{{- toJson (dict "name" (printf "%s-db-app" (include "mercato.componentName" .)) "key" "uri") -}}
{{- else if and (eq .c.database.kind "mongodb") $root.Values.mongodb.operator.enabled -}}
{{- toJson (dict "name" (printf "%s-mongodb-%s" (include "mercato.fullname" $root) .name) "key" "connectionString.standard") -}}
{{- else -}}
{{- $name := include "mercato.secretName" (dict "root" $root "name" .c.database.existingSecret) -}}
{{- if not $name -}}
{{- fail (printf "components.%s.database.existingSecret: name the Secret holding the database URL" .name) -}}
{{- end -}}
{{- toJson (dict "name" $name "key" .c.database.existingSecretKey) -}}
{{- end -}}
{{- end -}}

{{/*
Pods
*/}}

{{/* Plain settings of a component (the ConfigMap), as YAML: (dict "root" $ "name" "auth"). */}}
{{- define "mercato.config" -}}
{{- $root := .root -}}
{{- $c := include "mercato.component" . | fromYaml -}}
{{- $p := $c.envPrefix -}}
{{- $env := dict -}}
{{- if eq $c.kind "grpc" -}}
{{- $_ := set $env (printf "%sGRPC_HOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%sGRPC_PORT" $p) (toString $c.ports.app) -}}
{{- $_ := set $env (printf "%sGRPC_REFLECTION" $p) (toString $root.Values.config.grpcReflection) -}}
{{- else -}}
{{- $_ := set $env (printf "%sHOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%sPORT" $p) (toString $c.ports.app) -}}
{{- end -}}
{{- $_ := set $env (printf "%sMETRICS_PORT" $p) (toString $c.ports.metrics) -}}
{{- $_ := set $env (printf "%sMETRICS_HOST" $p) "0.0.0.0" -}}
{{- $_ := set $env (printf "%sLOG_LEVEL" $p) $root.Values.config.logLevel -}}
{{- $_ := set $env (printf "%sSERVICE_VERSION" $p) (toString $root.Chart.AppVersion) -}}
{{- $_ := set $env (printf "%sTOKEN_ISSUER" $p) (required "config.tokenIssuer is required: the gateway's public URL" $root.Values.config.tokenIssuer) -}}
{{- $_ := set $env (printf "%sTOKEN_AUDIENCE" $p) $root.Values.config.tokenAudience -}}
{{- if $root.Values.config.otlpEndpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $root.Values.config.otlpEndpoint -}}
{{- $_ := set $env "OTEL_LOGS_EXPORTER" $root.Values.config.logsExporter -}}
{{- else if eq $root.Values.config.logsExporter "otlp" -}}
{{- fail "config.logsExporter=otlp needs config.otlpEndpoint: the collector the logs go to" -}}
{{- end -}}
{{- range $callee := $c.calls -}}
{{- $_ := set $env (printf "%s%s_TARGET" $p (upper $callee)) (include "mercato.grpcTarget" (dict "root" $root "name" $callee)) -}}
{{- end -}}
{{- if $c.database.nameEnv -}}
{{- $_ := set $env (printf "%s%s" $p $c.database.nameEnv) $c.database.name -}}
{{- end -}}
{{- if $c.paymentsEnv -}}
{{- $_ := set $env (printf "%s%s" $p $c.paymentsEnv) $root.Values.payments.provider -}}
{{- if eq $root.Values.payments.provider "stripe" -}}
{{- $stripe := $root.Values.payments.stripe -}}
{{- if $stripe.apiBase -}}
{{- $_ := set $env (printf "%sSTRIPE_API_BASE" $p) $stripe.apiBase -}}
{{- end -}}
{{- $_ := set $env (printf "%sSTRIPE_WEBHOOK_TOLERANCE_SECONDS" $p) (toString $stripe.webhookToleranceSeconds) -}}
{{- end -}}
{{- end -}}
{{- if $c.kafka.bootstrapEnv -}}
{{- $_ := set $env (printf "%s%s" $p $c.kafka.bootstrapEnv) (include "mercato.kafka.bootstrap" $root) -}}
{{- range $key, $value := include "mercato.kafka.security.env" $root | fromYaml -}}
{{- $_ := set $env (printf "%s%s" $p $key) $value -}}
{{- end -}}
{{- end -}}
{{- $declared := list -}}
{{- range include "mercato.topics" $root | fromJsonArray -}}
{{- $declared = append $declared .declared -}}
{{- end -}}
{{- $kafkaPrefix := include "mercato.kafka.prefix" $root -}}
{{- range $variable, $topic := $c.kafka.topics -}}
{{- if not (has $topic $declared) -}}
{{- fail (printf "components.%s.kafka.topics.%s: topic %q is not declared in files/topics.yaml" $.name $variable $topic) -}}
{{- end -}}
{{- $_ := set $env (printf "%s%s" $p $variable) (printf "%s%s" $kafkaPrefix $topic) -}}
{{- end -}}
{{- if $c.kafka.consumerGroupEnv -}}
{{- $_ := set $env (printf "%s%s" $p $c.kafka.consumerGroupEnv) (include "mercato.kafka.consumerGroup" (dict "root" $root "c" $c)) -}}
{{- end -}}
{{- if $c.kafka.topicPrefixEnv -}}
{{- $_ := set $env (printf "%s%s" $p $c.kafka.topicPrefixEnv) $kafkaPrefix -}}
{{- end -}}
{{- if and $c.redis.urlEnv (not $root.Values.redis.existingSecret) -}}
{{- $_ := set $env (printf "%s%s" $p $c.redis.urlEnv) (required "redis.url (or redis.existingSecret) is required" $root.Values.redis.url) -}}
{{- end -}}
{{- if $c.migration.onStartEnv -}}
{{- $onStart := ternary "true" "false" (or (not $c.migration.enabled) (eq (include "mercato.database.managed" (dict "root" $root "c" $c)) "true")) -}}
{{- $_ := set $env (printf "%s%s" $p $c.migration.onStartEnv) $onStart -}}
{{- end -}}
{{- if include "mercato.tls.enabled" $root -}}
{{- $_ := set $env (printf "%sTLS_CERT_FILE" $p) "/etc/mercato/tls/tls.crt" -}}
{{- $_ := set $env (printf "%sTLS_KEY_FILE" $p) "/etc/mercato/tls/tls.key" -}}
{{- if and $root.Values.tls.mutual (eq $c.kind "grpc") -}}
{{- $_ := set $env (printf "%sTLS_CLIENT_CA_FILE" $p) "/etc/mercato/tls/ca.crt" -}}
{{- end -}}
{{- /* Outgoing calls: trust the CA (cert-manager's ca.crt in the same Secret) and present the
component's own certificate as client certificate. */ -}}
{{- if $c.calls -}}
{{- $_ := set $env (printf "%sTLS_CA_FILE" $p) "/etc/mercato/tls/ca.crt" -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := $c.env -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Secret-backed settings of a component, as a list of EnvVar: (dict "root" $ "name" n). */}}
{{- define "mercato.secretEnv" -}}
{{- $root := .root -}}
{{- $c := include "mercato.component" . | fromYaml -}}
{{- $p := $c.envPrefix -}}
{{- $vars := list -}}
{{- if $c.database.urlEnv -}}
{{- $ref := include "mercato.database.secret" (dict "root" $root "name" .name "c" $c) | fromJson -}}
{{- $vars = append $vars (dict "name" (printf "%s%s" $p $c.database.urlEnv) "valueFrom" (dict "secretKeyRef" (dict "name" $ref.name "key" $ref.key))) -}}
{{- end -}}
{{- if $c.kafka.bootstrapEnv -}}
{{- $vars = concat $vars (include "mercato.kafka.security.secretEnv" (dict "root" $root "prefix" $p) | fromYamlArray) -}}
{{- end -}}
{{- if and $c.paymentsEnv (eq $root.Values.payments.provider "stripe") -}}
{{- $stripe := $root.Values.payments.stripe -}}
{{- $name := include "mercato.secretName" (dict "root" $root "name" $stripe.existingSecret) -}}
{{- $vars = append $vars (dict "name" (printf "%sSTRIPE_API_KEY" $p) "valueFrom" (dict "secretKeyRef" (dict "name" $name "key" $stripe.apiKeyKey))) -}}
{{- $vars = append $vars (dict "name" (printf "%sSTRIPE_WEBHOOK_SECRET" $p) "valueFrom" (dict "secretKeyRef" (dict "name" $name "key" $stripe.webhookSecretKey))) -}}
{{- end -}}
{{- if and $c.redis.urlEnv $root.Values.redis.existingSecret -}}
{{- $vars = append $vars (dict "name" (printf "%s%s" $p $c.redis.urlEnv) "valueFrom" (dict "secretKeyRef" (dict "name" (include "mercato.secretName" (dict "root" $root "name" $root.Values.redis.existingSecret)) "key" $root.Values.redis.existingSecretKey))) -}}
{{- end -}}
{{- range $name := keys $c.secretEnv | sortAlpha -}}
{{- $ref := index $c.secretEnv $name -}}
{{- $vars = append $vars (dict "name" $name "valueFrom" (dict "secretKeyRef" (dict "name" (include "mercato.secretName" (dict "root" $root "name" $ref.secretName)) "key" $ref.key))) -}}
{{- end -}}
{{- toYaml $vars -}}
{{- end -}}

{{/* The Secrets a component's pods read at start (environment and files read once), sorted,
as a JSON list: what Stakater Reloader watches for it (reloader.enabled). The component's
certificate is left out: every process reads it again when it changes. */}}
{{- define "mercato.readSecrets" -}}
{{- $c := include "mercato.component" . | fromYaml -}}
{{- $names := list -}}
{{- range include "mercato.secretEnv" . | fromYamlArray -}}
{{- $names = append $names .valueFrom.secretKeyRef.name -}}
{{- end -}}
{{- if $c.kafka.bootstrapEnv -}}
{{- range include "mercato.kafka.security.volumes" .root | fromYamlArray -}}
{{- $names = append $names .secret.secretName -}}
{{- end -}}
{{- end -}}
{{- toJson ($names | uniq | sortAlpha) -}}
{{- end -}}

{{/* Whether services serve TLS themselves (no mesh). */}}
{{- define "mercato.tls.enabled" -}}
{{- if .Values.tls.enabled -}}
{{- if ne .Values.mesh.provider "none" -}}
{{- fail "tls.enabled is for deployments without a mesh: the mesh encrypts (set mesh.provider none or tls.enabled false)" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* Issuer of the service certificates, as JSON {name, kind}. */}}
{{- define "mercato.tls.issuer" -}}
{{- if .Values.tls.issuerRef.name -}}
{{- toJson (dict "name" .Values.tls.issuerRef.name "kind" .Values.tls.issuerRef.kind) -}}
{{- else -}}
{{- toJson (dict "name" (printf "%s-ca" (include "mercato.fullname" .)) "kind" "Issuer") -}}
{{- end -}}
{{- end -}}

{{/* Pod security context: Pod Security "restricted" defaults with the component's
podSecurityContext merged over them: (dict "c" component). */}}
{{- define "mercato.podSecurityContext" -}}
{{- $defaults := dict "runAsNonRoot" true "runAsUser" .c.runAsUser "runAsGroup" .c.runAsUser "fsGroup" .c.runAsUser "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- include "mercato.util.merge" (dict "base" $defaults "override" (.c.podSecurityContext | default dict)) -}}
{{- end -}}

{{/* Container security context: Pod Security "restricted" defaults with the component's
securityContext merged over them: (dict "c" component). */}}
{{- define "mercato.containerSecurityContext" -}}
{{- $defaults := dict "runAsNonRoot" true "runAsUser" .c.runAsUser "runAsGroup" .c.runAsUser "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "privileged" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- include "mercato.util.merge" (dict "base" $defaults "override" (.c.securityContext | default dict)) -}}
{{- end -}}

{{/* Pod annotations and labels that put a pod in (or keep it out of) the mesh:
(dict "root" $ "inject" bool "part" "annotations"|"labels"). */}}
{{- define "mercato.mesh.podMetadata" -}}
{{- $provider := .root.Values.mesh.provider -}}
{{- if eq .part "annotations" -}}
{{- if eq $provider "linkerd" }}
linkerd.io/inject: {{ ternary "enabled" "disabled" .inject }}
{{- else if and (eq $provider "istio") .inject }}
proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
{{- end }}
{{- else -}}
{{- if eq $provider "istio" }}
sidecar.istio.io/inject: {{ ternary "true" "false" .inject | quote }}
{{- end }}
{{- end -}}
{{- end -}}
