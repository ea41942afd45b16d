{{/* One NetworkPolicy rule: (dict "direction" "from"|"to" "peers" list "ports" list of
{port, protocol}); no peers = any address, no ports = any port. */}}
{{- define "mercato.networkPolicy.rule" -}}
{{- $rule := dict -}}
{{- if .peers -}}
{{- $_ := set $rule .direction .peers -}}
{{- end -}}
{{- $ports := list -}}
{{- range .ports -}}
{{- $ports = append $ports (dict "protocol" (.protocol | default "TCP") "port" .port) -}}
{{- end -}}
{{- if $ports -}}
{{- $_ := set $rule "ports" $ports -}}
{{- end -}}
- {{ toYaml $rule | indent 2 | trim }}
{{- end -}}

{{/* The egress rule to the cluster DNS: networkPolicy.dnsPeers on networkPolicy.dnsPorts, UDP
and TCP (the DNS pods' own ports: NetworkPolicies see the port after the Service's
translation). */}}
{{- define "mercato.networkPolicy.dns" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.dnsPorts -}}
{{- $ports = concat $ports (list (dict "port" . "protocol" "UDP") (dict "port" . "protocol" "TCP")) -}}
{{- end -}}
{{- include "mercato.networkPolicy.rule" (dict "direction" "to" "peers" .Values.networkPolicy.dnsPeers "ports" $ports) -}}
{{- end -}}

{{/* Egress rules to a component's database and (with "kafka" true) Kafka: the operator's pods
when the chart renders the datastore, else the values' networkPeers. (dict "root" $ "name" n
"c" component "kafka" bool) → YAML list of rules. */}}
{{- define "mercato.networkPolicy.datastores" -}}
{{- $root := .root -}}
{{- $rules := list -}}
{{- if eq .c.database.kind "postgres" -}}
{{- $peers := $root.Values.postgres.networkPeers -}}
{{- if $root.Values.cnpg.enabled -}}
{{- $peers = list (dict "podSelector" (dict "matchLabels" (dict "cnpg.io/cluster" (printf "%s-db" (include "mercato.componentName" (dict "root" $root "name" .name)))))) -}}
{{- end -}}
{{- $rules = append $rules (include "mercato.networkPolicy.rule" (dict "direction" "to" "peers" $peers "ports" (list (dict "port" $root.Values.postgres.port))) | fromYamlArray | first) -}}
{{- else if eq .c.database.kind "mongodb" -}}
{{- $peers := $root.Values.mongodb.networkPeers -}}
{{- if $root.Values.mongodb.operator.enabled -}}
{{- $peers = list (dict "podSelector" (dict "matchLabels" (dict "app" (printf "%s-mongodb-svc" (include "mercato.fullname" $root))))) -}}
{{- end -}}
{{- $rules = append $rules (include "mercato.networkPolicy.rule" (dict "direction" "to" "peers" $peers "ports" (list (dict "port" $root.Values.mongodb.port))) | fromYamlArray | first) -}}
{{- end -}}
{{- if .kafka -}}
{{- $rules = append $rules (include "mercato.networkPolicy.kafka" $root | fromYamlArray | first) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* The egress rule to Kafka: the chart's Strimzi brokers, or kafka.networkPeers on kafka.ports. */}}
{{- define "mercato.networkPolicy.kafka" -}}
{{- $peers := .Values.kafka.networkPeers -}}
{{- $ports := list -}}
{{- range .Values.kafka.ports -}}
{{- $ports = append $ports (dict "port" .) -}}
{{- end -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{- $peers = list (dict "podSelector" (dict "matchLabels" (dict "strimzi.io/cluster" (include "mercato.kafka.clusterName" .) "strimzi.io/kind" "Kafka"))) -}}
{{- $ports = list (dict "port" 9092) -}}
{{- end -}}
{{- include "mercato.networkPolicy.rule" (dict "direction" "to" "peers" $peers "ports" $ports) -}}
{{- end -}}
